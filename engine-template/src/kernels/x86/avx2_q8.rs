//! AVX2 bodies of the 8-bit activation GEMVs (`kernels::act8`; same signatures as the `*_ref`
//! twins there) and the activation quantizer.
//!
//! Per 32 weights a block costs one `vpmaddubsw` (unsigned × signed bytes, pairs summed to
//! i16), one `vpmaddwd` (pairs of i16 to 8 i32 lanes), one convert and one FMA by the block's
//! combined scale. Pair sums can't saturate: 4-bit codes give at most 2·15·127, and signed
//! 8-bit codes go in as `|w|` (≤ 128) against the activations carrying `w`'s sign (≤ 127),
//! 2·128·127 < 2^15 (llama.cpp's trick). Even and odd blocks use separate accumulators
//! ([`pairs`]) so the FMA chain is not the loop's critical path.

use super::{f16_to_f32, hsum_ps, load_f16x8, load_u8x8};
use crate::kernels::act8::{ActQ8, QK8};
use crate::kernels::blocks::{
    get_scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
    GgmlType, QK_K,
};
use crate::kernels::{int, rows, Ahead};
use std::arch::x86_64::*;

/// Sum of the 8 i32 lanes.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Quantizes `x` into `out` (buffers already sized), bit-identical to `quantize_q8_ref`: the
/// same `max|x| / 127`, the same `x * (1 / d)` product, and `vcvtps2dq`'s round-to-nearest-even.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_q8_avx2(x: &[f32], out: &mut ActQ8) {
    let sign = _mm256_set1_ps(-0.0);
    // `packs` interleaves 4-lane groups across the two 128-bit halves; this puts them back.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for k in 0..x.len() / QK8 {
        let p = x.as_ptr().add(k * QK8);
        // Plain arrays, no `from_fn` closures (see `pairs!`).
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let a = [
            _mm256_andnot_ps(sign, v[0]),
            _mm256_andnot_ps(sign, v[1]),
            _mm256_andnot_ps(sign, v[2]),
            _mm256_andnot_ps(sign, v[3]),
        ];
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let q = [
            _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id)),
            _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id)),
            _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id)),
            _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id)),
        ];
        let sum = hsum_epi32(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        let w = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let w = _mm256_permutevar8x32_epi32(w, order);
        _mm256_storeu_si256(out.qs.as_mut_ptr().add(k * QK8) as *mut __m256i, w);
        *out.d.get_unchecked_mut(k) = d;
        *out.s.get_unchecked_mut(k) = d * sum as f32;
    }
}

/// 8 i32 lanes, each the sum of 4 products of unsigned bytes `u` with signed bytes `s`.
#[inline(always)]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// As [`dot_u8_i8`] for two signed operands: `|a|` against `b` with `a`'s sign.
#[inline(always)]
unsafe fn dot_i8_i8(a: __m256i, b: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// 16 bytes of nibbles at `p` as 32 bytes in ggml's element order (low nibbles, then high).
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

/// 32 bytes of packed nibbles as (their low nibbles, their high nibbles), one per byte.
#[inline(always)]
unsafe fn nibble_halves(bytes: __m256i) -> (__m256i, __m256i) {
    let mask = _mm256_set1_epi8(0x0f);
    (
        _mm256_and_si256(bytes, mask),
        _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask),
    )
}

#[inline(always)]
unsafe fn load_codes(x: &ActQ8, k: usize) -> __m256i {
    _mm256_loadu_si256(x.qs.as_ptr().add(k * QK8) as *const __m256i)
}

/// A 32-weight GGUF block against one activation block, for the GEMV's per-block loop
/// ([`gemv_blocks_q8`]): the 8-lane integer dot, the weight scale `d`, and `c`, the block's
/// offset per unit of activation sum (value = `d * q + c`). Q5_0 / Q5_1 in ggml's block order
/// run it (packs store them split by rows, ADR 26, and those run the batched tile
/// through [`SplitRow`], as the 4-bit blocks do through [`Q8Pair`]). One fused function: written
/// through separate scales and codes, LLVM scheduled the Q5_0 GEMV 14% slower (Q4_K_M decode
/// 148 -> 130 tok/s, one thread 88 -> 76), though its loop's instructions came out the same.
trait Q8Block {
    unsafe fn dot(&self, xq: __m256i) -> (__m256i, f32, f32);
}

/// The 4-bit block formats, whose batched kernel ([`gemm_rows_q8`]) takes a block's scales and
/// codes apart and two blocks at a time.
trait Q8Pair {
    /// `d` and `c` (value = `d * q + c`).
    unsafe fn scales(&self) -> (f32, f32);
    /// The 16 bytes of nibbles.
    fn nibbles(&self) -> &[u8; 16];
    /// The 32 codes in element order.
    #[inline(always)]
    unsafe fn codes(&self) -> __m256i {
        nibbles32(self.nibbles().as_ptr())
    }
    /// Two blocks' codes in the order of [`ActQ8::pairs`]: both first halves (the low
    /// nibbles), then both second halves.
    #[inline(always)]
    unsafe fn pair_codes(a: &Self, b: &Self) -> (__m256i, __m256i) {
        nibble_halves(_mm256_set_m128i(
            _mm_loadu_si128(b.nibbles().as_ptr() as *const __m128i),
            _mm_loadu_si128(a.nibbles().as_ptr() as *const __m128i),
        ))
    }
}

impl Q8Pair for BlockQ4_0 {
    #[inline(always)]
    unsafe fn scales(&self) -> (f32, f32) {
        let d = f16_to_f32(self.d);
        (d, -8.0 * d)
    }
    #[inline(always)]
    fn nibbles(&self) -> &[u8; 16] {
        &self.qs
    }
}

impl Q8Pair for BlockQ4_1 {
    #[inline(always)]
    unsafe fn scales(&self) -> (f32, f32) {
        (f16_to_f32(self.d), f16_to_f32(self.m))
    }
    #[inline(always)]
    fn nibbles(&self) -> &[u8; 16] {
        &self.qs
    }
}

/// The fifth bits of 32 codes as `0x10` bytes: byte `i` takes the byte of `qh` that `pick`
/// names (`vpshufb`), and is set where that byte's bit `i % 8` is: every other bit is set and
/// the result compared with all-ones (llama.cpp's `bytes_from_bits_32`).
#[inline(always)]
unsafe fn high_bits(qh: __m256i, pick: __m256i) -> __m256i {
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    let spread = _mm256_or_si256(_mm256_shuffle_epi8(qh, pick), others);
    let set = _mm256_cmpeq_epi8(spread, _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `vpshufb` indices that give bytes `8j..8j + 8` of a vector byte `b[j]` of their 128-bit half.
#[inline(always)]
unsafe fn pick_bytes(b: [i64; 4]) -> __m256i {
    let r = 0x0101010101010101;
    _mm256_set_epi64x(b[3] * r, b[2] * r, b[1] * r, b[0] * r)
}

/// The 32 5-bit codes of a Q5_0 / Q5_1 block in element order: the nibbles, plus 16 where bit
/// `e` of `qh` is set.
#[inline(always)]
unsafe fn q5_codes(qs: *const u8, qh: [u8; 4]) -> __m256i {
    let bits = _mm256_set1_epi32(i32::from_le_bytes(qh));
    _mm256_or_si256(nibbles32(qs), high_bits(bits, pick_bytes([0, 1, 2, 3])))
}

impl Q8Block for BlockQ5_0 {
    #[inline(always)]
    unsafe fn dot(&self, xq: __m256i) -> (__m256i, f32, f32) {
        let d = f16_to_f32(self.d);
        (
            dot_u8_i8(q5_codes(self.qs.as_ptr(), self.qh), xq),
            d,
            -16.0 * d,
        )
    }
}

impl Q8Block for BlockQ5_1 {
    #[inline(always)]
    unsafe fn dot(&self, xq: __m256i) -> (__m256i, f32, f32) {
        let p = dot_u8_i8(q5_codes(self.qs.as_ptr(), self.qh), xq);
        (p, f16_to_f32(self.d), f16_to_f32(self.m))
    }
}

/// Evaluates `body` (with `k` and the accumulator `acc` bound) for `k in 0..n`, even `k` into
/// one accumulator and odd into another, unrolled by two with the pair in named locals:
/// indexing `acc[k & 1]` made LLVM keep the accumulators on the stack. A macro, not a function
/// taking a closure: a closure that LLVM declines to inline does not get the caller's
/// `target_feature`s, and every intrinsic in it becomes a call (Q5_0 ran at a tenth of its
/// speed that way).
macro_rules! pairs {
    ($n:expr, $zero:expr, |$k:ident, $acc:ident| $body:expr) => {{
        let (n, mut a0, mut a1) = ($n, $zero, $zero);
        let mut i = 0;
        while i + 2 <= n {
            a0 = {
                let ($k, $acc) = (i, a0);
                $body
            };
            a1 = {
                let ($k, $acc) = (i + 1, a1);
                $body
            };
            i += 2;
        }
        if i < n {
            a0 = {
                let ($k, $acc) = (i, a0);
                $body
            };
        }
        (a0, a1)
    }};
}

/// The row loop of the 32-weight block formats: `sum_k d_k dx_k dot_k + c_k s_k`.
#[inline(always)]
unsafe fn gemv_blocks_q8<B: Q8Block>(w: &[B], x: &ActQ8, y: &mut [f32]) {
    let nb = x.len() / QK8;
    let ahead = Ahead::blocks::<B>(nb);
    for (r, yr) in y.iter_mut().enumerate() {
        let row = w.get_unchecked(r * nb..(r + 1) * nb);
        let zero = (_mm256_setzero_ps(), 0.0f32);
        let (a, b) = pairs!(nb, zero, |k, acc_off| {
            ahead.part(row.as_ptr().cast(), k, 1);
            let (acc, off) = acc_off;
            let (p, d, c) = row.get_unchecked(k).dot(load_codes(x, k));
            let (dx, s) = (*x.d.get_unchecked(k), *x.s.get_unchecked(k));
            (
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * dx), acc),
                c * s + off,
            )
        });
        *yr = hsum_ps(_mm256_add_ps(a.0, b.0)) + (a.1 + b.1);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold `y.len()` rows of `x.len() / 32`
/// blocks (the `act8` dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q4_0_q8_avx2(w: &[BlockQ4_0], x: &ActQ8, y: &mut [f32]) {
    // The batched kernel's tile with one token: two blocks a step, their headers gathered
    // eight at a time. With the row prefetch it ran native Q4_1 decode 3-7% faster than the
    // per-block loop (A/B, 199 -> 213 tok/s).
    gemm_q4_0_q8_avx2(w, std::slice::from_ref(x), y)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold the rows of `y.len() / xs.len()`
/// outputs, each `xs[0].len() / 32` blocks, and every token the same length (the `act8`
/// dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_0_q8_avx2(w: &[BlockQ4_0], xs: &[ActQ8], y: &mut [f32]) {
    let nb = xs.first().map_or(0, |x| x.len() / QK8);
    gemm_rows_q8(xs, y, |r| w.get_unchecked(r * nb..(r + 1) * nb))
}

/// # Safety
/// As [`gemv_q4_0_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q4_1_q8_avx2(w: &[BlockQ4_1], x: &ActQ8, y: &mut [f32]) {
    // As [`gemv_q4_0_q8_avx2`].
    gemm_q4_1_q8_avx2(w, std::slice::from_ref(x), y)
}

/// # Safety
/// As [`gemm_q4_0_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_1_q8_avx2(w: &[BlockQ4_1], xs: &[ActQ8], y: &mut [f32]) {
    let nb = xs.first().map_or(0, |x| x.len() / QK8);
    gemm_rows_q8(xs, y, |r| w.get_unchecked(r * nb..(r + 1) * nb))
}

/// # Safety
/// As [`gemv_q4_0_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q5_0_q8_avx2(w: &[BlockQ5_0], x: &ActQ8, y: &mut [f32]) {
    gemv_blocks_q8(w, x, y)
}

/// # Safety
/// As [`gemv_q4_0_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q5_1_q8_avx2(w: &[BlockQ5_1], x: &ActQ8, y: &mut [f32]) {
    gemv_blocks_q8(w, x, y)
}

/// The batched tile with one token ([`gemm_q8_0_tile`]).
///
/// # Safety
/// As [`gemv_q4_0_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q8_0_q8_avx2(w: &[BlockQ8_0], x: &ActQ8, y: &mut [f32]) {
    gemm_q8_0_tile::<1>(w, std::slice::from_ref(x), y)
}

/// Q8_0 rows · several tokens' 8-bit activations (prefill): `y[i * rows + r] = dot(row r,
/// xs[i])`, `y` being `[xs.len(), rows]`. Four tokens at a time ([`gemm_q8_0_tile`]), the rest
/// in a tile of three, two or one.
///
/// # Safety
/// As [`gemm_q4_0_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q8_0_q8_avx2(w: &[BlockQ8_0], xs: &[ActQ8], y: &mut [f32]) {
    let rows = y.len() / xs.len().max(1);
    let mut i = 0;
    while i + 4 <= xs.len() {
        gemm_q8_0_tile::<4>(w, &xs[i..i + 4], &mut y[i * rows..(i + 4) * rows]);
        i += 4;
    }
    let (xs, y) = (&xs[i..], &mut y[i * rows..]);
    match xs.len() {
        3 => gemm_q8_0_tile::<3>(w, xs, y),
        2 => gemm_q8_0_tile::<2>(w, xs, y),
        1 => gemm_q8_0_tile::<1>(w, xs, y),
        _ => {}
    }
}

/// `T` tokens against every Q8_0 row, two blocks at a time. As in the 4-bit tiles
/// ([`gemm_tile_q8`]), a pair of blocks is taken as both first halves, then both second halves
/// (a lane shuffle per half), to meet the activations' [`ActQ8::pairs`]: the pair's dot comes
/// out with block `k` in lanes 0-3 and `k + 1` in lanes 4-7, so one convert and one FMA serve
/// two blocks. The weights' side of llama.cpp's sign trick ([`dot_i8_i8`]: the shuffles, `|w|`,
/// the pair's two scales in their lanes) is done once for all `T` tokens. A token then costs
/// two `vpsignb`, two `vpmaddubsw`, two `vpmaddwd` and an add (the halves' pair sums, up to
/// 2 * 128 * 127, can't be added in i16 as the 4-bit tiles do), a convert, a multiply by its
/// [`ActQ8::d_pairs`] and an FMA per 64 weights. One token (decode) has the steps `d_w * d_x`
/// of eight blocks made by one multiply instead.
///
/// One block at a time (a convert, a step and an FMA each) ran prefill 10-12% slower; steps of
/// eight blocks per token kept in registers, as the 4-bit tiles do, spilled and were slower
/// still, about as fast as widening the rows to f32 for the float tiles. Gathering the eight
/// scales as f16 into one vector (`vpinsrw`) and widening them with one `vcvtph2ps`, instead of
/// a scalar convert each through the stack, made prefill 5-8% faster. Decode on this tile
/// against the per-block loop of the other block formats ([`gemv_blocks_q8`]) measured even
/// (paired medians 0.98-1.04x, ADR 37): Q8_0 decode waits on memory either way. Two rows at a
/// time, sharing the activations' loads and the horizontal sums, was 27% slower, and rows split
/// by field (as ADR 26 stores the 4- and 5-bit blocks) no faster in decode.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_q8_0_tile<const T: usize>(w: &[BlockQ8_0], xs: &[ActQ8], y: &mut [f32]) {
    assert!(
        xs.iter().all(ActQ8::pairs_sized),
        "gemm_q8_0_tile: activations not filled by ActQ8::quantize"
    );
    let nb = xs[0].len() / QK8;
    let rows = y.len() / T;
    let ones = _mm256_set1_epi16(1);
    let px: [*const i8; T] = std::array::from_fn(|t| xs[t].pairs().as_ptr());
    let xdp: [*const f32; T] = std::array::from_fn(|t| xs[t].d_pairs().as_ptr());
    let xd0 = xs[0].d.as_ptr();
    let ahead = Ahead::blocks::<BlockQ8_0>(nb);
    // Blocks `k` and `k + 1` (`dw`: their scales in the lanes of their sums, for one token
    // their steps) against every token, into `acc[t][a]`.
    macro_rules! pair {
        ($row:ident, $acc:ident, $a:expr, $k:expr, $dw:expr) => {
            let (k, dw) = ($k, $dw);
            let b0 = _mm256_loadu_si256($row.get_unchecked(k).qs.as_ptr() as *const __m256i);
            let b1 = _mm256_loadu_si256($row.get_unchecked(k + 1).qs.as_ptr() as *const __m256i);
            let lo = _mm256_permute2x128_si256::<0x20>(b0, b1);
            let hi = _mm256_permute2x128_si256::<0x31>(b0, b1);
            let (alo, ahi) = (_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(hi, hi));
            for t in 0..T {
                let xp = px[t].add(k * QK8) as *const __m256i;
                let (x0, x1) = (_mm256_loadu_si256(xp), _mm256_loadu_si256(xp.add(1)));
                let p = _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(x0, lo)), ones),
                    _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(x1, hi)), ones),
                );
                let step = if T == 1 {
                    dw
                } else {
                    _mm256_mul_ps(dw, _mm256_loadu_ps(xdp[t].add(k * 4)))
                };
                $acc[t][$a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), step, $acc[t][$a]);
            }
        };
    }
    for r in 0..rows {
        let row = w.get_unchecked(r * nb..(r + 1) * nb);
        // Tiles of one or two tokens also send every other pair to a second accumulator per
        // token, so FMA latency does not set the pace.
        let mut acc = [[_mm256_setzero_ps(); 2]; T];
        let mut k = 0;
        while k + 8 <= nb {
            // Eight blocks' scales gathered once, then spread over each pair's lanes.
            let d = |j: usize| row.get_unchecked(k + j).d.to_bits() as i16;
            let mut dw = _mm256_cvtph_ps(_mm_setr_epi16(
                d(0),
                d(1),
                d(2),
                d(3),
                d(4),
                d(5),
                d(6),
                d(7),
            ));
            if T == 1 {
                dw = _mm256_mul_ps(dw, _mm256_loadu_ps(xd0.add(k)));
                ahead.part(row.as_ptr().cast(), k, 8);
            }
            macro_rules! lanes {
                ($j:literal) => {
                    let idx = _mm256_setr_epi32($j, $j, $j, $j, $j + 1, $j + 1, $j + 1, $j + 1);
                    let a = if T <= 2 { $j / 2 % 2 } else { 0 };
                    pair!(row, acc, a, k + $j, _mm256_permutevar8x32_ps(dw, idx));
                };
            }
            lanes!(0);
            lanes!(2);
            lanes!(4);
            lanes!(6);
            k += 8;
        }
        // The blocks past the last run of eight: pairs with their scales put in the lanes by
        // hand, then an odd last block alone.
        while k + 2 <= nb {
            let (mut d0, mut d1) = (f16_to_f32(row[k].d), f16_to_f32(row[k + 1].d));
            if T == 1 {
                (d0, d1) = (d0 * *xd0.add(k), d1 * *xd0.add(k + 1));
            }
            pair!(
                row,
                acc,
                0,
                k,
                _mm256_setr_m128(_mm_set1_ps(d0), _mm_set1_ps(d1))
            );
            k += 2;
        }
        if k < nb {
            let b = row.get_unchecked(k);
            let wq = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
            for (t, x) in xs.iter().enumerate() {
                let xq = _mm256_loadu_si256(x.qs.as_ptr().add(k * QK8) as *const __m256i);
                let step = _mm256_set1_ps(f16_to_f32(b.d) * *x.d.get_unchecked(k));
                let p = _mm256_cvtepi32_ps(dot_i8_i8(wq, xq));
                acc[t][0] = _mm256_fmadd_ps(p, step, acc[t][0]);
            }
        }
        for (t, a) in acc.iter().enumerate() {
            *y.get_unchecked_mut(t * rows + r) = hsum_ps(_mm256_add_ps(a[0], a[1]));
        }
    }
}

/// Int8 rows: the unsigned codes flip their top bit to become `q - 128` (signed), so a weight
/// is `d * (q - 128) + (m + 128 d)`; the second term needs only the total activation sum.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemv_int8_q8_avx2(w: &[u8], x: &ActQ8, y: &mut [f32]) {
    let rb = int::check_int8_rows("gemv_int8_q8_avx2", x.len(), w.len(), y.len());
    let nb = x.len() / QK8;
    let total: f32 = x.s.iter().sum();
    let flip = _mm256_set1_epi8(i8::MIN);
    let ahead = Ahead::new(rb, nb);
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, m) = int::row_scales_f32(row);
        let qp = row.as_ptr().add(int::INT8_HEADER);
        let (a, b) = pairs!(nb, _mm256_setzero_ps(), |k, acc| {
            ahead.part(row.as_ptr(), k, 1);
            let q = _mm256_xor_si256(_mm256_loadu_si256(qp.add(k * QK8) as *const __m256i), flip);
            let p = dot_i8_i8(q, load_codes(x, k));
            let dx = _mm256_set1_ps(*x.d.get_unchecked(k));
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dx, acc)
        });
        *yr = d * hsum_ps(_mm256_add_ps(a, b)) + (m + 128.0 * d) * total;
    }
}

/// Int4 rows with groups of `group`: per group `d * scales[g] * sum_k dx_k dot_k`, minus
/// `dmin * mins[g]` times the group's activation sum. Groups of 32 are one activation block
/// each and run the batched kernel's tile with one token ([`gemm_int4_q8_avx2`]); larger
/// groups take 32 bytes at a time, whose low nibbles are one activation block of the group's
/// first half and high nibbles one of its second half.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_int4_q8_avx2(group: usize, w: &[u8], x: &ActQ8, y: &mut [f32]) {
    if group == QK8 {
        return gemm_int4_q8_avx2(group, w, std::slice::from_ref(x), y);
    }
    let rb = int::check_int4_rows("gemv_int4_q8_avx2", group, x.len(), w.len(), y.len());
    let (ng, half) = (x.len() / group, group / 2);
    let per = group / QK8;
    let gs: Vec<f32> = x.s.chunks_exact(per).map(|c| c.iter().sum()).collect();
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, dmin, scales, mins, qs) = int::int4_row(row, ng);
        let (a, b) = pairs!(ng, _mm256_setzero_ps(), |g, acc| {
            let qg = qs.as_ptr().add(g * half);
            let mut v = _mm256_setzero_ps();
            for c in (0..half).step_by(QK8) {
                let (lo, hi) = nibble_halves(_mm256_loadu_si256(qg.add(c) as *const __m256i));
                for (codes, k) in [
                    (lo, (g * group + c) / QK8),
                    (hi, (g * group + half + c) / QK8),
                ] {
                    let p = dot_u8_i8(codes, load_codes(x, k));
                    v = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(p),
                        _mm256_set1_ps(*x.d.get_unchecked(k)),
                        v,
                    );
                }
            }
            let step = _mm256_set1_ps(d * *scales.get_unchecked(g) as f32);
            _mm256_fmadd_ps(step, v, acc)
        });
        *yr = hsum_ps(_mm256_add_ps(a, b)) - dmin * int::mins_dot(mins, &gs);
    }
}

/// Q4_K: per 256-weight block, 8 groups of 32 with 6-bit scales and mins, through the batched
/// tile ([`gemm_rows_q8`], one token) as [`Q4KRow`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold `y.len()` rows of `x.len() / 256`
/// blocks (the `act8` dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q4_k_q8_avx2(w: &[BlockQ4K], x: &ActQ8, y: &mut [f32]) {
    gemm_q4_k_q8_avx2(w, std::slice::from_ref(x), y)
}

/// # Safety
/// As [`gemm_q4_0_q8_avx2`], with rows of `xs[0].len() / 256` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_k_q8_avx2(w: &[BlockQ4K], xs: &[ActQ8], y: &mut [f32]) {
    let nb = xs.first().map_or(0, |x| x.len() / QK_K);
    gemm_rows_q8(xs, y, |r| Q4KRow(w.get_unchecked(r * nb..(r + 1) * nb)))
}

/// A row of Q4_K blocks as the batched tile reads it: each block is eight groups, so
/// [`RowQ8::scales8`] is one block's header. Its packed 6-bit scales and mins are unpacked
/// with llama.cpp's masks (three words in, four out) instead of per group
/// ([`get_scale_min_k4`]); the per-block loop this replaced, with a scalar unpack and a scalar
/// step per group, streamed half as fast.
struct Q4KRow<'a>(&'a [BlockQ4K]);

impl Q4KRow<'_> {
    /// Group `k`'s 32 bytes of `qs`, whose low nibbles are group `k & !1` and high nibbles
    /// group `k | 1`.
    #[inline(always)]
    unsafe fn qs32(&self, k: usize) -> __m256i {
        let b = self.0.get_unchecked(k / 8);
        _mm256_loadu_si256(b.qs.as_ptr().add(32 * (k % 8 / 2)) as *const __m256i)
    }
}

impl RowQ8 for Q4KRow<'_> {
    #[inline(always)]
    fn start(&self) -> *const u8 {
        self.0.as_ptr() as *const u8
    }
    #[inline(always)]
    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.0)
    }
    #[inline(always)]
    unsafe fn scales8(&self, k: usize) -> (__m256, __m256) {
        const KMASK1: u32 = 0x3f3f_3f3f;
        const KMASK2: u32 = 0x0f0f_0f0f;
        const KMASK3: u32 = 0x0303_0303;
        let b = self.0.get_unchecked(k / 8);
        let word = |i: usize| u32::from_le_bytes(b.scales[4 * i..4 * i + 4].try_into().unwrap());
        let (u0, u1, u2) = (word(0), word(1), word(2));
        // Scales of groups 0-3 are the low six bits of bytes 0-3 and 4-7 of bytes 8-11's low
        // nibbles with bytes 0-3's top two bits; mins likewise from bytes 4-7 and 8-11's high
        // nibbles (`get_scale_min_k4`).
        let scales = [u0 & KMASK1, (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)];
        let mins = [
            u1 & KMASK1,
            ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
        ];
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        (
            _mm256_mul_ps(load_u8x8(scales.as_ptr() as *const u8), _mm256_set1_ps(d)),
            _mm256_mul_ps(load_u8x8(mins.as_ptr() as *const u8), _mm256_set1_ps(-dmin)),
        )
    }
    #[inline(always)]
    unsafe fn pair(&self, k: usize) -> (__m256i, __m256i) {
        // The nibbles are groups `k` (low) and `k + 1` (high) whole; the pair order wants both
        // first halves, then both second halves: one 128-bit lane swap each.
        let (lo, hi) = nibble_halves(self.qs32(k));
        (
            _mm256_permute2x128_si256(lo, hi, 0x20),
            _mm256_permute2x128_si256(lo, hi, 0x31),
        )
    }
    #[inline(always)]
    unsafe fn scale(&self, k: usize) -> (f32, f32) {
        let b = self.0.get_unchecked(k / 8);
        let (sc, m) = get_scale_min_k4(k % 8, &b.scales);
        (f16_to_f32(b.d) * sc as f32, -f16_to_f32(b.dmin) * m as f32)
    }
    #[inline(always)]
    unsafe fn codes(&self, k: usize) -> __m256i {
        let (lo, hi) = nibble_halves(self.qs32(k));
        if k.is_multiple_of(2) {
            lo
        } else {
            hi
        }
    }
}

/// Q6_K: per 256-weight block, two halves of 128 whose 6-bit codes are rebuilt 32 at a time
/// in element order (low nibbles from `ql`, two high bits from `qh`), minus 32 so they are
/// signed. Each 16 weights have their own 8-bit scale, so the pair sums of `vpmaddubsw` are
/// weighted by them with `vpmaddwd` (the first 128 bits take one scale, the second the next),
/// and each activation block adds `d * dx` times that.
///
/// # Safety
/// As [`gemv_q4_k_q8_avx2`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q6_k_q8_avx2(w: &[BlockQ6K], x: &ActQ8, y: &mut [f32]) {
    let nb = x.len() / QK_K;
    let ahead = Ahead::blocks::<BlockQ6K>(nb);
    let (m4, m30, k32) = (
        _mm256_set1_epi8(0x0f),
        _mm256_set1_epi8(0x30),
        _mm256_set1_epi8(32),
    );
    for (r, yr) in y.iter_mut().enumerate() {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let row = w.get_unchecked(r * nb..(r + 1) * nb);
        for (i, blk) in row.iter().enumerate() {
            ahead.part(row.as_ptr().cast(), i, 1);
            let d = f16_to_f32(blk.d);
            for h in 0..2 {
                let ql = blk.ql.as_ptr().add(64 * h);
                let ql0 = _mm256_loadu_si256(ql as *const __m256i);
                let ql1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                let qh = _mm256_loadu_si256(blk.qh.as_ptr().add(32 * h) as *const __m256i);
                // Element order: ql0 low | qh bits 0-1, ql1 low | bits 2-3, ql0 high | bits 4-5,
                // ql1 high | bits 6-7 (16-bit shifts; the masks drop what crosses bytes).
                let codes = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                    ),
                ];
                for (j, c) in codes.into_iter().enumerate() {
                    let q = _mm256_sub_epi8(c, k32);
                    let k = i * QK_K / QK8 + 4 * h + j;
                    let xq = load_codes(x, k);
                    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q));
                    let sc = blk.scales.as_ptr().add(8 * h + 2 * j);
                    let scales = _mm256_set_m128i(
                        _mm_set1_epi16(*sc.add(1) as i16),
                        _mm_set1_epi16(*sc as i16),
                    );
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, scales));
                    let step = _mm256_set1_ps(d * *x.d.get_unchecked(k));
                    if j % 2 == 0 {
                        a0 = _mm256_fmadd_ps(p, step, a0);
                    } else {
                        a1 = _mm256_fmadd_ps(p, step, a1);
                    }
                }
            }
        }
        *yr = hsum_ps(_mm256_add_ps(a0, a1));
    }
}

/// Int4 rows · several tokens' 8-bit activations: `y[i * rows + r] = dot(row r, xs[i])`
/// (`y` is `[xs.len(), rows]`), the batched form of [`gemv_int4_q8_avx2`] that prefill runs
/// (and decode, with one token, for groups of 32). Groups of 32 go through [`gemm_rows_q8`];
/// other groups run the GEMV once per token.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `y.len()` must be `xs.len()` times the rows of
/// `w`, and every token the same length (the `act8` dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_int4_q8_avx2(group: usize, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    let Some(x0) = xs.first() else { return };
    let rows = y.len() / xs.len();
    if group != QK8 {
        for (x, y) in xs.iter().zip(y.chunks_exact_mut(rows.max(1))) {
            gemv_int4_q8_avx2(group, w, x, y);
        }
        return;
    }
    let rb = int::check_int4_rows("gemm_int4_q8_avx2", group, x0.len(), w.len(), rows);
    let ng = x0.len() / QK8;
    gemm_rows_q8(xs, y, |r| {
        Int4G32::<false>::of(w.get_unchecked(r * rb..(r + 1) * rb), ng)
    })
}

/// The one-token tiles' groups `g..ng` past their last run of eight, in plain order: whole
/// pairs with their two steps put in the lanes by hand (rows of 576 end in one pair; taking
/// its groups one at a time made them cost as much as the other 16), then an odd last group.
/// The scaled sums go into the row's accumulator `acc`; the value is the row's share of the
/// offsets. A macro, not a function: a shared function returning the sums made the lane kernel
/// 17% slower on rows with no such groups.
macro_rules! last_groups_q8 {
    ($x:expr, $w:expr, $g:ident, $ng:expr, $acc:expr) => {{
        let (px, xd, xsum) = ($x.pairs().as_ptr(), $x.d.as_ptr(), $x.s.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let mut tail = 0.0f32;
        while $g + 2 <= $ng {
            let xp = px.add($g * QK8) as *const __m256i;
            let ((d0, c0), (d1, c1)) = ($w.scale($g), $w.scale($g + 1));
            let (lo, hi) = $w.pair($g);
            let step = _mm256_setr_m128(
                _mm_set1_ps(d0 * *xd.add($g)),
                _mm_set1_ps(d1 * *xd.add($g + 1)),
            );
            $acc = _mm256_fmadd_ps(pair_sums(lo, hi, xp, ones), step, $acc);
            tail += c0 * *xsum.add($g) + c1 * *xsum.add($g + 1);
            $g += 2;
        }
        if $g < $ng {
            let xq = _mm256_loadu_si256($x.qs.as_ptr().add($g * QK8) as *const __m256i);
            let (codes, (d, c)) = ($w.codes($g), $w.scale($g));
            let p = _mm256_cvtepi32_ps(dot_u8_i8(codes, xq));
            $acc = _mm256_fmadd_ps(p, _mm256_set1_ps(d * *xd.add($g)), $acc);
            tail += c * *xsum.add($g);
        }
        tail
    }};
}

/// Int4 g32 rows in the lane layout ([`int::int4_to_lanes`]) · several tokens' 8-bit
/// activations, their lanes filled ([`ActQ8::fill_lanes`]): `y[i * rows + r] = dot(row r,
/// xs[i])` through [`gemm_rows_q8`] (decode passes one token: [`gemv_lanes_tile_q8`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every token the same length (the `act8`
/// dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_int4_lanes_q8_avx2(w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    let Some(x0) = xs.first() else { return };
    let rows = y.len() / xs.len();
    let rb = int::check_int4_rows("gemm_int4_lanes_q8_avx2", QK8, x0.len(), w.len(), rows);
    let ng = x0.len() / QK8;
    gemm_rows_q8(xs, y, |r| {
        Int4G32::<true>::of(w.get_unchecked(r * rb..(r + 1) * rb), ng)
    })
}

/// A row in the lane layout against one token. Each run of eight groups is four 32-byte loads
/// whose 32-bit lane `j` is group `j`'s, against the eight vectors of [`ActQ8::lanes`]: the
/// eight `vpmaddubsw` add up in i16 (at most 8 * 3810, no overflow), then one `vpmaddwd`, one
/// convert and one FMA by the eight groups' steps `sc * dx` as they lie, lane for lane. The
/// plain layout ([`gemv_tile_q8`]) needs a convert, a lane shuffle of the steps and an FMA per
/// pair of groups; llvm-mca (znver3) puts the two FP pipes that run the shuffles and the nibble
/// shifts at 81% there. Measured on one thread, this kernel streams 15-26% more bytes a second
/// (ADR 43).
#[inline(always)]
unsafe fn gemv_lanes_tile_q8<R: RowQ8>(x: &ActQ8, w: R, ahead: Ahead) -> f32 {
    let ng = x.len() / QK8;
    let ones = _mm256_set1_epi16(1);
    let (xl, xd, xsum) = (x.lanes().as_ptr(), x.d.as_ptr(), x.s.as_ptr());
    let (mut acc, mut accm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut g = 0;
    while g + int::LANE_RUN <= ng {
        ahead.part(w.start(), g, int::LANE_RUN);
        let xv = xl.add(g * QK8) as *const __m256i;
        let (m, dx) = (_mm256_loadu_ps(xsum.add(g)), _mm256_loadu_ps(xd.add(g)));
        let (sc, off) = w.scales8(g);
        accm = _mm256_fmadd_ps(off, m, accm);
        let qs = w.run_qs(g);
        // Two partial sums, so the i16 adds are not one chain.
        let mut s = [_mm256_setzero_si256(); 2];
        for l in 0..4 {
            let (lo, hi) = nibble_halves(_mm256_loadu_si256(qs.add(l)));
            let p = _mm256_add_epi16(
                _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xv.add(2 * l))),
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xv.add(2 * l + 1))),
            );
            s[l % 2] = _mm256_add_epi16(s[l % 2], p);
        }
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_add_epi16(s[0], s[1]), ones));
        acc = _mm256_fmadd_ps(p, _mm256_mul_ps(sc, dx), acc);
        g += int::LANE_RUN;
    }
    // Groups past the last whole run are in plain order.
    let tail = last_groups_q8!(x, w, g, ng, acc);
    hsum_ps(_mm256_fmadd_ps(acc, _mm256_set1_ps(w.row_d()), accm)) + tail
}

/// One weight row as the batched kernel ([`gemm_rows_q8`]) reads it: groups of 32 weights,
/// each with a scale `d` and an offset `c` per unit of activation sum (value = `d * q + c`).
trait RowQ8 {
    /// Whether each whole run of eight groups is in the lane layout ([`int::int4_to_lanes`]):
    /// the tiles then read it through [`RowQ8::run_qs`] and the activations' lanes.
    const LANES: bool = false;
    /// The four 32-byte vectors of the run of eight groups from `g` (only called where
    /// [`RowQ8::LANES`]).
    unsafe fn run_qs(&self, _g: usize) -> *const __m256i {
        unreachable!("only rows in the lane layout have runs")
    }
    /// Whether the group scales are small integers under one float per row (int4 g32's u8
    /// `scales` times `d`). They then weight the pair sums in `vpmaddwd`, which otherwise adds
    /// them with weight 1, and `d` multiplies the row's sum once ([`RowQ8::row_d`]).
    const INT_SCALES: bool = false;
    /// What multiplies the scaled sum at the end (1 unless [`RowQ8::INT_SCALES`]).
    fn row_d(&self) -> f32 {
        1.0
    }
    /// Groups `k..k + 8`'s integer scales as i16, in both 128-bit halves (only called where
    /// [`RowQ8::INT_SCALES`]).
    unsafe fn int_scales8(&self, _k: usize) -> __m256i {
        unreachable!("only rows with integer scales have them")
    }
    /// Groups `k..k + 8`: their scales (without [`RowQ8::row_d`]) and offsets, one lane each.
    unsafe fn scales8(&self, k: usize) -> (__m256, __m256);
    /// Groups `k` and `k + 1`'s unsigned codes in the order of [`ActQ8::pairs`]: both first
    /// halves, then both second halves.
    unsafe fn pair(&self, k: usize) -> (__m256i, __m256i);
    /// [`RowQ8::pair`] for groups `g + J` and `g + J + 1` of a whole run of eight (`g` a
    /// multiple of 8, `J` one of 0, 2, 4, 6), as the eight-group loops call it; split Q5 rows
    /// read these groups' fifth bits from a plane, with shifts that `J` fixes.
    #[inline(always)]
    unsafe fn pair8<const J: usize>(&self, g: usize) -> (__m256i, __m256i) {
        self.pair(g + J)
    }
    /// Group `k`'s scale (without [`RowQ8::row_d`]) and offset `c`.
    unsafe fn scale(&self, k: usize) -> (f32, f32);
    /// Group `k`'s codes in element order.
    unsafe fn codes(&self, k: usize) -> __m256i;
    /// Where the row's bytes start (the one-token tiles' prefetch, [`Ahead`]).
    fn start(&self) -> *const u8;
    /// How many bytes the row has (the rows of a matrix lie back to back, so also the stride).
    fn bytes(&self) -> usize;
}

impl<B: Q8Pair> RowQ8 for &[B] {
    #[inline(always)]
    unsafe fn scales8(&self, k: usize) -> (__m256, __m256) {
        // The block headers are gathered through the stack.
        let (mut ds, mut cs) = ([0.0f32; 8], [0.0f32; 8]);
        for j in 0..8 {
            (ds[j], cs[j]) = self.get_unchecked(k + j).scales();
        }
        (_mm256_loadu_ps(ds.as_ptr()), _mm256_loadu_ps(cs.as_ptr()))
    }
    #[inline(always)]
    unsafe fn pair(&self, k: usize) -> (__m256i, __m256i) {
        B::pair_codes(self.get_unchecked(k), self.get_unchecked(k + 1))
    }
    #[inline(always)]
    unsafe fn scale(&self, k: usize) -> (f32, f32) {
        self.get_unchecked(k).scales()
    }
    #[inline(always)]
    unsafe fn codes(&self, k: usize) -> __m256i {
        self.get_unchecked(k).codes()
    }
    #[inline(always)]
    fn start(&self) -> *const u8 {
        self.as_ptr() as *const u8
    }
    #[inline(always)]
    fn bytes(&self) -> usize {
        std::mem::size_of_val(*self)
    }
}

/// An int4 g32 row's parts (`int::int4_row`), its runs of eight groups in the lane layout
/// where `LANES`.
struct Int4G32<'a, const LANES: bool> {
    d: f32,
    dmin: f32,
    scales: &'a [u8],
    mins: &'a [u8],
    qs: &'a [u8],
}

impl<'a, const LANES: bool> Int4G32<'a, LANES> {
    /// The parts of `row`, a row of `ng` groups.
    #[inline(always)]
    fn of(row: &'a [u8], ng: usize) -> Self {
        let (d, dmin, scales, mins, qs) = int::int4_row(row, ng);
        Int4G32 {
            d,
            dmin,
            scales,
            mins,
            qs,
        }
    }
}

/// Two groups' codes (`lo`, `hi`, as [`RowQ8::pair`] gives them) against one token's pair of
/// activation blocks at `xp` (as [`ActQ8::pairs`] lays them out): the pair sums of both
/// `vpmaddubsw`, weighted by `w16` in `vpmaddwd`, as 8 f32 lanes (the first group's in 0-3).
#[inline(always)]
unsafe fn pair_sums(lo: __m256i, hi: __m256i, xp: *const __m256i, w16: __m256i) -> __m256 {
    let s16 = _mm256_add_epi16(
        _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xp)),
        _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xp.add(1))),
    );
    _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, w16))
}

impl<const LANES: bool> RowQ8 for Int4G32<'_, LANES> {
    const LANES: bool = LANES;
    #[inline(always)]
    unsafe fn run_qs(&self, g: usize) -> *const __m256i {
        self.qs.as_ptr().add(g * 16) as *const __m256i
    }
    const INT_SCALES: bool = true;
    #[inline(always)]
    fn row_d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    unsafe fn int_scales8(&self, k: usize) -> __m256i {
        let sc = _mm_cvtepu8_epi16(_mm_loadl_epi64(
            self.scales.as_ptr().add(k) as *const __m128i
        ));
        _mm256_broadcastsi128_si256(sc)
    }
    #[inline(always)]
    fn start(&self) -> *const u8 {
        // The header `d`, `dmin` comes before the scales.
        self.scales.as_ptr().wrapping_sub(int::INT4_HEADER)
    }
    #[inline(always)]
    fn bytes(&self) -> usize {
        int::INT4_HEADER + self.scales.len() + self.mins.len() + self.qs.len()
    }
    #[inline(always)]
    unsafe fn scales8(&self, k: usize) -> (__m256, __m256) {
        (
            load_u8x8(self.scales.as_ptr().add(k)),
            _mm256_mul_ps(
                load_u8x8(self.mins.as_ptr().add(k)),
                _mm256_set1_ps(-self.dmin),
            ),
        )
    }
    #[inline(always)]
    unsafe fn pair(&self, k: usize) -> (__m256i, __m256i) {
        // The 32 bytes of two groups: low nibbles are both first halves, high both second.
        nibble_halves(_mm256_loadu_si256(
            self.qs.as_ptr().add(k * 16) as *const __m256i
        ))
    }
    #[inline(always)]
    unsafe fn scale(&self, k: usize) -> (f32, f32) {
        let (sc, mn) = (*self.scales.get_unchecked(k), *self.mins.get_unchecked(k));
        (sc as f32, -self.dmin * mn as f32)
    }
    #[inline(always)]
    unsafe fn codes(&self, k: usize) -> __m256i {
        nibbles32(self.qs.as_ptr().add(k * 16))
    }
}

/// A row of split Q4_0 / Q4_1 / Q5_0 / Q5_1 blocks ([`crate::kernels::rows`]): its fields'
/// arrays, `m` empty without `MIN` (Q4_0's offset is `-8 d`, Q5_0's `-16 d`), `qh` without
/// `HIGH` (the 4-bit formats); with `LANES`, `qs`'s whole runs of eight blocks in the lane
/// layout (`int::qs_to_lanes`).
struct SplitRow<'a, const MIN: bool, const HIGH: bool, const LANES: bool = false> {
    d: &'a [u8],
    m: &'a [u8],
    qh: &'a [u8],
    qs: &'a [u8],
}

impl<const MIN: bool, const HIGH: bool, const LANES: bool> SplitRow<'_, MIN, HIGH, LANES> {
    /// The offset per unit of `d` of the formats without `m`.
    const ZERO: f32 = if HIGH { -16.0 } else { -8.0 };

    /// Groups `k` and `k + 1`'s nibbles in one load: first halves low, second halves high.
    #[inline(always)]
    unsafe fn nibbles(&self, k: usize) -> (__m256i, __m256i) {
        nibble_halves(_mm256_loadu_si256(
            self.qs.as_ptr().add(k * 16) as *const __m256i
        ))
    }
}

impl<const MIN: bool, const HIGH: bool, const LANES: bool> RowQ8
    for SplitRow<'_, MIN, HIGH, LANES>
{
    const LANES: bool = LANES;
    #[inline(always)]
    unsafe fn run_qs(&self, g: usize) -> *const __m256i {
        self.qs.as_ptr().add(g * 16) as *const __m256i
    }
    #[inline(always)]
    fn start(&self) -> *const u8 {
        // A split row begins with its scales (`rows::fields`).
        self.d.as_ptr()
    }
    #[inline(always)]
    fn bytes(&self) -> usize {
        self.d.len() + self.m.len() + self.qh.len() + self.qs.len()
    }
    #[inline(always)]
    unsafe fn scales8(&self, k: usize) -> (__m256, __m256) {
        // Eight headers are one load and one convert: what splitting the rows is for.
        let d = load_f16x8(self.d.as_ptr().add(2 * k) as *const half::f16);
        let c = if MIN {
            load_f16x8(self.m.as_ptr().add(2 * k) as *const half::f16)
        } else {
            _mm256_mul_ps(d, _mm256_set1_ps(Self::ZERO))
        };
        (d, c)
    }
    #[inline(always)]
    unsafe fn pair8<const J: usize>(&self, g: usize) -> (__m256i, __m256i) {
        let (lo, hi) = self.nibbles(g + J);
        if !HIGH {
            return (lo, hi);
        }
        // Bit `v` of each byte of the run's plane is vector `v`'s fifth bit (`rows`), the
        // pair's vectors being `J` and `J + 1`: shifted to bit 4 in 16-bit lanes (no bit
        // crosses into the bit 4 of the other byte for shifts up to 4) and masked.
        let plane = _mm256_loadu_si256(self.qh.as_ptr().add(4 * g) as *const __m256i);
        let (a, b) = match J {
            0 => (_mm256_slli_epi16::<4>(plane), _mm256_slli_epi16::<3>(plane)),
            2 => (_mm256_slli_epi16::<2>(plane), _mm256_slli_epi16::<1>(plane)),
            4 => (plane, _mm256_srli_epi16::<1>(plane)),
            _ => (_mm256_srli_epi16::<2>(plane), _mm256_srli_epi16::<3>(plane)),
        };
        let bit4 = _mm256_set1_epi8(0x10);
        (
            _mm256_or_si256(lo, _mm256_and_si256(a, bit4)),
            _mm256_or_si256(hi, _mm256_and_si256(b, bit4)),
        )
    }
    #[inline(always)]
    unsafe fn pair(&self, k: usize) -> (__m256i, __m256i) {
        // Only groups past the last whole run of eight come here, whose `qh` are ggml's
        // words: both in one quadword, bytes 0-1 and 4-5 holding the first halves' fifth bits.
        let (lo, hi) = self.nibbles(k);
        if !HIGH {
            return (lo, hi);
        }
        let qh = std::ptr::read_unaligned(self.qh.as_ptr().add(4 * k) as *const i64);
        let bits = _mm256_set1_epi64x(qh);
        (
            _mm256_or_si256(lo, high_bits(bits, pick_bytes([0, 1, 4, 5]))),
            _mm256_or_si256(hi, high_bits(bits, pick_bytes([2, 3, 6, 7]))),
        )
    }
    #[inline(always)]
    unsafe fn scale(&self, k: usize) -> (f32, f32) {
        let f16_at = |a: &[u8]| f16_to_f32(half::f16::from_le_bytes([a[2 * k], a[2 * k + 1]]));
        let d = f16_at(self.d);
        (d, if MIN { f16_at(self.m) } else { Self::ZERO * d })
    }
    #[inline(always)]
    unsafe fn codes(&self, k: usize) -> __m256i {
        // A group past the last whole run of eight, as in `pair`.
        let qs = self.qs.as_ptr().add(16 * k);
        if !HIGH {
            return nibbles32(qs);
        }
        let qh = self.qh.get_unchecked(4 * k..4 * k + 4);
        q5_codes(qs, [qh[0], qh[1], qh[2], qh[3]])
    }
}

/// Split Q4_0 / Q4_1 / Q5_0 / Q5_1 rows ([`crate::kernels::rows`]) · several tokens' 8-bit
/// activations, through [`gemm_rows_q8`] (decode passes one token); with `lanes`, the 4-bit
/// rows' `qs` in the lane layout.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `t` must be one of those formats (a 4-bit one with
/// `lanes`), `w` whole rows of `xs[0].len() / 32` blocks for `y.len() / xs.len()` outputs, and
/// every token the same length (the `act8` dispatcher checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_split_q8_avx2(t: GgmlType, lanes: bool, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    let Some(x0) = xs.first() else { return };
    let nb = x0.len() / QK8;
    let rb = nb * t.block_bytes();
    let field = |name| rows::field_range(t, nb, name);
    let (d, m, qh, qs) = (field("d"), field("m"), field("qh"), field("qs"));
    let (min, high) = (!m.is_empty(), !qh.is_empty());
    macro_rules! run {
        ($min:literal, $high:literal) => {
            run!($min, $high, false)
        };
        ($min:literal, $high:literal, $lanes:literal) => {
            gemm_rows_q8(xs, y, |r| {
                let row = w.get_unchecked(r * rb..(r + 1) * rb);
                SplitRow::<$min, $high, $lanes> {
                    d: row.get_unchecked(d.clone()),
                    m: row.get_unchecked(m.clone()),
                    qh: row.get_unchecked(qh.clone()),
                    qs: row.get_unchecked(qs.clone()),
                }
            })
        };
    }
    match (min, high, lanes) {
        (false, false, false) => run!(false, false),
        (true, false, false) => run!(true, false),
        (false, false, true) => run!(false, false, true),
        (true, false, true) => run!(true, false, true),
        (false, true, _) => run!(false, true),
        (true, true, _) => run!(true, true),
    }
}

/// Several tokens against every row (`row(r)` for `r < y.len() / xs.len()`): `y[i * rows + r]
/// = dot(row r, xs[i])`, four tokens at a time ([`gemm_tile_q8`]); one token (decode) runs
/// [`gemv_rows_q8`].
#[inline(always)]
unsafe fn gemm_rows_q8<R: RowQ8>(xs: &[ActQ8], y: &mut [f32], row: impl Fn(usize) -> R) {
    assert!(
        xs.iter().all(ActQ8::pairs_sized),
        "gemm_rows_q8: activations not filled by ActQ8::quantize"
    );
    assert!(
        !R::LANES || xs.iter().all(ActQ8::lanes_sized),
        "gemm_rows_q8: rows in the lane layout, activations' lanes not filled (fill_lanes)"
    );
    let rows = y.len() / xs.len().max(1);
    let mut i = 0;
    while i + 4 <= xs.len() {
        gemm_tile_q8_apart::<R, 4>(&xs[i..i + 4], &mut y[i * rows..(i + 4) * rows], &row);
        i += 4;
    }
    let (xs, y) = (&xs[i..], &mut y[i * rows..]);
    match xs.len() {
        3 => gemm_tile_q8_apart::<R, 3>(xs, y, &row),
        2 => gemm_tile_q8_apart::<R, 2>(xs, y, &row),
        1 => gemv_rows_q8(&xs[0], y, &row),
        _ => {}
    }
}

/// [`gemm_tile_q8`] in a function of its own. Inlined beside the one-token loop (decode's,
/// [`gemv_rows_q8`]), the four-token loop came out with its accumulators spilled to the stack
/// (prefill 20% slower). The one-token loop is a function of its own too: inlined into
/// [`gemm_rows_q8`] as one row at a time (ADR 47), it made llvm spill more in int4w's
/// four-token lane tile (prefill 10-12% slower).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_tile_q8_apart<R: RowQ8, const T: usize>(
    xs: &[ActQ8],
    y: &mut [f32],
    row: &impl Fn(usize) -> R,
) {
    gemm_tile_q8::<R, T>(xs, y, row)
}

/// `T` tokens against every row, eight groups at a time. What depends on the weights alone is
/// done once per row and eight groups, for all `T` tokens: the scales and offsets go into one
/// vector each, and each pair of groups' codes is split into its two halves (as
/// [`gemv_int4_q8_avx2`] does). A token then costs two `vpmaddubsw` (added in i16: at most
/// 2 * 3810), a `vpmaddwd`, a convert, a lane broadcast of its step `d * dx` (`vpermps`) and an
/// FMA per 64 weights, with its own accumulator (`T` independent FMA chains), plus a multiply
/// and an FMA per eight groups: the offsets `c * s` go into the same accumulator, whose lanes
/// are summed only at the end, so no scalar loop remains per row. Rows with integer group
/// scales (int4 g32, [`RowQ8::INT_SCALES`]) put them in the `vpmaddwd` instead of ones when
/// several tokens share them, and read each token's steps from [`ActQ8::d_pairs`] in place of
/// the lane broadcast: prefill 4-6% faster. Rows in the lane layout ([`RowQ8::LANES`]) take
/// each run as [`gemv_lanes_tile_q8`] does, its four vectors split once for all `T` tokens.
#[inline(always)]
unsafe fn gemm_tile_q8<R: RowQ8, const T: usize>(
    xs: &[ActQ8],
    y: &mut [f32],
    row: &impl Fn(usize) -> R,
) {
    let ng = xs[0].len() / QK8;
    let rows = y.len() / T;
    let ones = _mm256_set1_epi16(1);
    // The tokens' arrays, fetched once.
    let mut px = [std::ptr::null::<i8>(); T];
    let (mut xd, mut xsum) = ([std::ptr::null::<f32>(); T], [std::ptr::null::<f32>(); T]);
    // Where the scales are integers, `acc` is scaled by the row's `d` at the end and the
    // offsets go to `accm`, which is not. The scales also go into `vpmaddwd` here (`int`),
    // where several tokens share them; for one token ([`gemv_tile_q8`]) that measured 3.5%
    // slower than a lane shuffle of the steps, as the weight-side work is not shared.
    let int = R::INT_SCALES;
    let mut xdp = [std::ptr::null::<f32>(); T];
    let mut xl = [std::ptr::null::<i8>(); T];
    for t in 0..T {
        if R::LANES {
            xl[t] = xs[t].lanes().as_ptr();
        }
        px[t] = xs[t].pairs().as_ptr();
        xd[t] = xs[t].d.as_ptr();
        xsum[t] = xs[t].s.as_ptr();
        if int {
            xdp[t] = xs[t].d_pairs().as_ptr();
        }
    }
    for r in 0..rows {
        let w = row(r);
        // Tiles of two tokens also send every other pair of groups to a second accumulator per
        // token, so FMA latency does not set the pace; four tokens already have four chains.
        let mut acc = [_mm256_setzero_ps(); T];
        let mut acc2 = [_mm256_setzero_ps(); T];
        let mut accm = [_mm256_setzero_ps(); T];
        let mut g = 0;
        while g + 8 <= ng {
            let (sc, off) = w.scales8(g);
            let mut step = [_mm256_setzero_ps(); T];
            let isc = if int { w.int_scales8(g) } else { ones };
            for t in 0..T {
                let m = _mm256_loadu_ps(xsum[t].add(g));
                if R::INT_SCALES {
                    accm[t] = _mm256_fmadd_ps(off, m, accm[t]);
                } else {
                    acc[t] = _mm256_fmadd_ps(off, m, acc[t]);
                }
                if !int {
                    step[t] = _mm256_mul_ps(sc, _mm256_loadu_ps(xd[t].add(g)));
                }
            }
            if R::LANES {
                // Lane `j` of every vector is group `j`'s: a token's eight `vpmaddubsw` add up
                // in i16 (at most 8 * 3810), and one `vpmaddwd` weights them by the groups'
                // integer scales, each in both i16 halves of its lane, into the eight groups'
                // sums; the step is then the token's block scales as they lie.
                let qs = w.run_qs(g);
                let wsc = if int {
                    // i16 scales 0-3 (low half) and 4-7 (high half), each twice.
                    let pick = |b: i8| {
                        _mm_setr_epi8(
                            b,
                            b + 1,
                            b,
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 4,
                            b + 5,
                            b + 6,
                            b + 7,
                            b + 6,
                            b + 7,
                        )
                    };
                    _mm256_shuffle_epi8(isc, _mm256_setr_m128i(pick(0), pick(8)))
                } else {
                    ones
                };
                let mut s16 = [_mm256_setzero_si256(); T];
                for l in 0..4 {
                    let (lo, hi) = nibble_halves(_mm256_loadu_si256(qs.add(l)));
                    for t in 0..T {
                        let xv = xl[t].add(g * QK8) as *const __m256i;
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xv.add(2 * l))),
                            _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xv.add(2 * l + 1))),
                        );
                        s16[t] = _mm256_add_epi16(s16[t], p);
                    }
                }
                for t in 0..T {
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[t], wsc));
                    let sj = if int {
                        _mm256_loadu_ps(xd[t].add(g))
                    } else {
                        step[t]
                    };
                    acc[t] = _mm256_fmadd_ps(p, sj, acc[t]);
                }
                g += 8;
                continue;
            }
            macro_rules! pair {
                ($j:literal) => {
                    let (lo, hi) = w.pair8::<$j>(g);
                    let idx = _mm256_setr_epi32($j, $j, $j, $j, $j + 1, $j + 1, $j + 1, $j + 1);
                    // Integer scales: both groups' i16 scales spread over the halves their pair
                    // sums come out in, so `vpmaddwd` weights them and the step per token is a
                    // load of `d_pairs` (no lane shuffle per token).
                    let wsc = if int {
                        // Byte indices of i16 lanes `j` (low half) and `j + 1` (high half).
                        let lane = |k: i16| (2 * k + 1) << 8 | 2 * k;
                        _mm256_shuffle_epi8(
                            isc,
                            _mm256_setr_m128i(
                                _mm_set1_epi16(lane($j)),
                                _mm_set1_epi16(lane($j + 1)),
                            ),
                        )
                    } else {
                        ones
                    };
                    for t in 0..T {
                        let xp = px[t].add((g + $j) * QK8) as *const __m256i;
                        let p = pair_sums(lo, hi, xp, wsc);
                        let sj = if int {
                            _mm256_loadu_ps(xdp[t].add((g + $j) * 4))
                        } else {
                            _mm256_permutevar8x32_ps(step[t], idx)
                        };
                        if T <= 2 && $j % 4 == 2 {
                            acc2[t] = _mm256_fmadd_ps(p, sj, acc2[t]);
                        } else {
                            acc[t] = _mm256_fmadd_ps(p, sj, acc[t]);
                        }
                    }
                };
            }
            pair!(0);
            pair!(2);
            pair!(4);
            pair!(6);
            g += 8;
        }
        // The last `ng % 8` groups: whole pairs as above, with their two steps put in the
        // lanes by hand (rows of 576 end in one pair; taking its groups one at a time made
        // them cost as much as the other 16), then an odd last group alone.
        let mut tail = [0.0f32; T];
        while g + 2 <= ng {
            let ((d0, c0), (d1, c1)) = (w.scale(g), w.scale(g + 1));
            let (lo, hi) = w.pair(g);
            for t in 0..T {
                let p = pair_sums(lo, hi, px[t].add(g * QK8) as *const __m256i, ones);
                let sj = _mm256_setr_m128(
                    _mm_set1_ps(d0 * *xd[t].add(g)),
                    _mm_set1_ps(d1 * *xd[t].add(g + 1)),
                );
                acc[t] = _mm256_fmadd_ps(p, sj, acc[t]);
                tail[t] += c0 * *xsum[t].add(g) + c1 * *xsum[t].add(g + 1);
            }
            g += 2;
        }
        if g < ng {
            let (codes, (d, c)) = (w.codes(g), w.scale(g));
            for t in 0..T {
                let xq = _mm256_loadu_si256(xs[t].qs.as_ptr().add(g * QK8) as *const __m256i);
                let p = _mm256_cvtepi32_ps(dot_u8_i8(codes, xq));
                acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * *xd[t].add(g)), acc[t]);
                tail[t] += c * *xsum[t].add(g);
            }
        }
        for t in 0..T {
            let sum = _mm256_add_ps(acc[t], acc2[t]);
            *y.get_unchecked_mut(t * rows + r) = if R::INT_SCALES {
                hsum_ps(_mm256_fmadd_ps(sum, _mm256_set1_ps(w.row_d()), accm[t])) + tail[t]
            } else {
                hsum_ps(sum) + tail[t]
            };
        }
    }
}

/// One token against every row (`row(r)` for `r < y.len()`), one row at a time
/// ([`gemv_tile_q8`], or [`gemv_lanes_tile_q8`] for rows in the lane layout), each run of
/// eight groups asking for the weights ahead ([`Ahead`]).
///
/// One row at a time, not two: two rows read side by side are two streams through memory, and
/// on rows of 1536 weights (the down projection) a thread streamed Q4_1 at 57% of its read
/// bandwidth that way against 83% one row at a time; rows of 576 measured alike either way.
/// Decode ran 1.06-1.07x faster for Q4_1 and 1.09-1.11x for int4w (paired A/B, ADR 47), though
/// each row now ends in its own horizontal sum, a chain the two-row tile shared.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_rows_q8<R: RowQ8>(x: &ActQ8, y: &mut [f32], row: &impl Fn(usize) -> R) {
    if y.is_empty() {
        return;
    }
    let ahead = Ahead::new(row(0).bytes(), x.len() / QK8);
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = if R::LANES {
            gemv_lanes_tile_q8(x, row(r), ahead)
        } else {
            gemv_tile_q8(x, row(r), ahead)
        };
    }
}

/// A row against one token (decode): the loop of [`gemm_tile_q8`] for one token.
#[inline(always)]
unsafe fn gemv_tile_q8<R: RowQ8>(x: &ActQ8, w: R, ahead: Ahead) -> f32 {
    let ng = x.len() / QK8;
    let ones = _mm256_set1_epi16(1);
    let (px, xd, xsum) = (x.pairs().as_ptr(), x.d.as_ptr(), x.s.as_ptr());
    // Two accumulators (every other pair of groups), so FMA latency does not set the pace; the
    // offsets of integer-scaled rows go to `accm`, which the row's `d` doesn't scale.
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut accm = _mm256_setzero_ps();
    let mut g = 0;
    while g + 8 <= ng {
        ahead.part(w.start(), g, 8);
        let (m, dx) = (_mm256_loadu_ps(xsum.add(g)), _mm256_loadu_ps(xd.add(g)));
        let (sc, off) = w.scales8(g);
        if R::INT_SCALES {
            accm = _mm256_fmadd_ps(off, m, accm);
        } else {
            acc[0] = _mm256_fmadd_ps(off, m, acc[0]);
        }
        let step = _mm256_mul_ps(sc, dx);
        macro_rules! pair {
            ($k:literal) => {
                let xp = px.add((g + $k) * QK8) as *const __m256i;
                let (lo, hi) = w.pair8::<$k>(g);
                let idx = _mm256_setr_epi32($k, $k, $k, $k, $k + 1, $k + 1, $k + 1, $k + 1);
                let sj = _mm256_permutevar8x32_ps(step, idx);
                acc[$k / 2 % 2] = _mm256_fmadd_ps(pair_sums(lo, hi, xp, ones), sj, acc[$k / 2 % 2]);
            };
        }
        pair!(0);
        pair!(2);
        pair!(4);
        pair!(6);
        g += 8;
    }
    let tail = last_groups_q8!(x, w, g, ng, acc[0]);
    let sum = _mm256_add_ps(acc[0], acc[1]);
    if R::INT_SCALES {
        hsum_ps(_mm256_fmadd_ps(sum, _mm256_set1_ps(w.row_d()), accm)) + tail
    } else {
        hsum_ps(sum) + tail
    }
}
