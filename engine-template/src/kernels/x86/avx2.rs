//! AVX2 + FMA (+ F16C) kernels. Same signatures as their `reference` twins.
//!
//! Decode is memory-bound: each weight is read once per token. The dot loops therefore keep
//! four independent accumulators (32 floats a step) so FMA latency never stalls the stream, and
//! widen bf16/f16 in registers so only 2 bytes a weight cross the memory bus.

use super::{exp_ps, hmax_ps, hsum_ps, load_bf16x8, load_f16x8, load_f32x8};
use crate::kernels::{reference, Ahead, KvElem, Widen};
use half::{bf16, f16};
use std::arch::x86_64::*;

macro_rules! dot_avx2 {
    ($name:ident, $body:ident, $elem:ty, $load:expr, $tail:path) => {
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[$elem], x: &[f32]) -> f32 {
            $body(w, x, None)
        }

        /// The dot product above, asking for the weights ahead through `ahead` (a GEMV's rows)
        /// when given.
        #[inline(always)]
        unsafe fn $body(w: &[$elem], x: &[f32], ahead: Option<Ahead>) -> f32 {
            assert_eq!(
                w.len(),
                x.len(),
                concat!(stringify!($name), ": lengths differ")
            );
            let n = w.len();
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                if let Some(ahead) = ahead {
                    ahead.part(wp as *const u8, i / 32, 1);
                }
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * k;
                    *a = _mm256_fmadd_ps($load(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps($load(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            hsum_ps(sum) + $tail(&w[i..], &x[i..])
        }
    };
}

dot_avx2!(
    dot_f32_avx2,
    dot_f32_body,
    f32,
    load_f32x8,
    reference::dot_f32_ref
);
dot_avx2!(
    dot_bf16_avx2,
    dot_bf16_body,
    bf16,
    load_bf16x8,
    reference::dot_bf16_ref
);
dot_avx2!(
    dot_f16_avx2,
    dot_f16_body,
    f16,
    load_f16x8,
    reference::dot_f16_ref
);

macro_rules! gemv_avx2 {
    ($name:ident, $elem:ty, $dot:ident, $ahead:expr) => {
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[$elem], x: &[f32], y: &mut [f32]) {
            let cols = x.len();
            assert_eq!(
                w.len(),
                cols * y.len(),
                concat!(stringify!($name), ": shape mismatch")
            );
            if cols == 0 {
                y.fill(0.0);
                return;
            }
            // 16-bit rows ask for their weights a part per 32 (64 bytes), as the dot loop steps:
            // left to the hardware prefetchers, two threads streamed bf16 at 70-75% of their
            // read bandwidth, with this at 86% (decode 1.16x). f32 rows, twice the bytes for
            // the same instructions, measured 0.91x with it and go without (ADR 48).
            let ahead = $ahead.then(|| Ahead::new(cols * std::mem::size_of::<$elem>(), cols / 32));
            for (yr, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
                *yr = $dot(row, x, ahead);
            }
        }
    };
}
gemv_avx2!(gemv_f32_avx2, f32, dot_f32_body, false);
gemv_avx2!(gemv_bf16_avx2, bf16, dot_bf16_body, true);
gemv_avx2!(gemv_f16_avx2, f16, dot_f16_body, true);

macro_rules! widen_avx2 {
    ($name:ident, $elem:ty, $load:expr, $tail:path) => {
        /// Widens to f32 in registers, 32 weights a step with one index (the batched GEMM's
        /// row scratch; the compiler's own loop was SSE2 only, a quarter of bf16's prefill).
        ///
        /// # Safety
        /// The CPU must support AVX2 and F16C.
        #[target_feature(enable = "avx2,f16c")]
        pub unsafe fn $name(w: &[$elem], out: &mut [f32]) {
            assert_eq!(
                w.len(),
                out.len(),
                concat!(stringify!($name), ": lengths differ")
            );
            let (n, wp, op) = (w.len(), w.as_ptr(), out.as_mut_ptr());
            let mut i = 0;
            while i + 32 <= n {
                for k in (0..32).step_by(8) {
                    _mm256_storeu_ps(op.add(i + k), $load(wp.add(i + k)));
                }
                i += 32;
            }
            while i + 8 <= n {
                _mm256_storeu_ps(op.add(i), $load(wp.add(i)));
                i += 8;
            }
            $tail(&w[i..], &mut out[i..]);
        }
    };
}
widen_avx2!(
    widen_bf16_avx2,
    bf16,
    load_bf16x8,
    reference::widen_bf16_ref
);
widen_avx2!(widen_f16_avx2, f16, load_f16x8, reference::widen_f16_ref);

/// Four weight rows against two tokens. Each step loads 8 floats of both tokens once and of
/// each row once, for eight FMAs into eight independent accumulators: enough chains to cover
/// the FMA latency on two ports, and each token's activations are read once per four rows
/// (a 1 x 4 tile re-read them for every row and ran out of loads before FMAs).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4x2_avx2<E: Widen>(w: [&[E]; 4], x: [&[f32]; 2]) -> [[f32; 2]; 4] {
    let n = x[0].len();
    assert!(
        x[1].len() == n && w.iter().all(|w| w.len() == n),
        "dot4x2_avx2: lengths differ"
    );
    let (wp, xp) = (w.map(|w| w.as_ptr()), x.map(|x| x.as_ptr()));
    // Eight named accumulators: an array of them, read after the loop, stayed on the stack and
    // cost a store per FMA.
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a10, mut a11) = (z, z, z, z);
    let (mut a20, mut a21, mut a30, mut a31) = (z, z, z, z);
    let mut i = 0;
    while i + 8 <= n {
        let (x0, x1) = (_mm256_loadu_ps(xp[0].add(i)), _mm256_loadu_ps(xp[1].add(i)));
        let w0 = E::load8(wp[0].add(i));
        a00 = _mm256_fmadd_ps(w0, x0, a00);
        a01 = _mm256_fmadd_ps(w0, x1, a01);
        let w1 = E::load8(wp[1].add(i));
        a10 = _mm256_fmadd_ps(w1, x0, a10);
        a11 = _mm256_fmadd_ps(w1, x1, a11);
        let w2 = E::load8(wp[2].add(i));
        a20 = _mm256_fmadd_ps(w2, x0, a20);
        a21 = _mm256_fmadd_ps(w2, x1, a21);
        let w3 = E::load8(wp[3].add(i));
        a30 = _mm256_fmadd_ps(w3, x0, a30);
        a31 = _mm256_fmadd_ps(w3, x1, a31);
        i += 8;
    }
    tile_sums([[a00, a01], [a10, a11], [a20, a21], [a30, a31]], w, x, i)
}

/// Four weight rows against three tokens: twelve accumulators, the three tokens' vectors and
/// one row's vector fill the sixteen registers; 7 loads feed 12 FMAs (the 4 x 2 tile: 6 for 8).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4x3_avx2<E: Widen>(w: [&[E]; 4], x: [&[f32]; 3]) -> [[f32; 3]; 4] {
    let n = x[0].len();
    assert!(
        x.iter().all(|x| x.len() == n) && w.iter().all(|w| w.len() == n),
        "dot4x3_avx2: lengths differ"
    );
    let (wp, xp) = (w.map(|w| w.as_ptr()), x.map(|x| x.as_ptr()));
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (z, z, z, z, z, z);
    let (mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (z, z, z, z, z, z);
    let mut i = 0;
    while i + 8 <= n {
        let x0 = _mm256_loadu_ps(xp[0].add(i));
        let x1 = _mm256_loadu_ps(xp[1].add(i));
        let x2 = _mm256_loadu_ps(xp[2].add(i));
        // One row's vector at a time, into its three accumulators.
        macro_rules! row {
            ($r:literal, $a0:ident, $a1:ident, $a2:ident) => {
                let w = E::load8(wp[$r].add(i));
                $a0 = _mm256_fmadd_ps(w, x0, $a0);
                $a1 = _mm256_fmadd_ps(w, x1, $a1);
                $a2 = _mm256_fmadd_ps(w, x2, $a2);
            };
        }
        row!(0, a00, a01, a02);
        row!(1, a10, a11, a12);
        row!(2, a20, a21, a22);
        row!(3, a30, a31, a32);
        i += 8;
    }
    let sums = [
        [a00, a01, a02],
        [a10, a11, a12],
        [a20, a21, a22],
        [a30, a31, a32],
    ];
    tile_sums(sums, w, x, i)
}

/// The 4 x `T` tiles' results: each accumulator's horizontal sum plus the elements from `i`
/// on, past the last whole vector.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_sums<E: Widen, const T: usize>(
    sums: [[__m256; T]; 4],
    w: [&[E]; 4],
    x: [&[f32]; T],
    i: usize,
) -> [[f32; T]; 4] {
    let mut out = [[0.0f32; T]; 4];
    for (r, (o, s)) in out.iter_mut().zip(sums).enumerate() {
        for (t, (o, s)) in o.iter_mut().zip(s).enumerate() {
            *o = hsum_ps(s) + reference::dot_widen_ref(&w[r][i..], &x[t][i..]);
        }
    }
    out
}

/// The unnormalized attention of query heads that share one key-value head (GQA), as
/// [`reference::attend_heads_ref`]. Decode ran it as a dot and an axpy call per key, 7% of
/// int4w's samples; then one head at a time, four keys at a time, where each head of a group
/// read the same keys and values again, out of L2 by then (a layer's share of them is larger
/// than L1), and those loads were where its samples sat. Here up to three heads go together:
/// each key's and value's eight floats are loaded once for all of them, while they are in L1.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_heads_avx2<T: KvElem>(
    q: &[f32],
    (k, v): (&[T], &[T]),
    (stride, at): (usize, usize),
    scale: f32,
    sc: &mut [f32],
    out: &mut [f32],
    ms: &mut [f32],
) {
    let (g, hd, n) = reference::attend_heads_shape("attend_heads_avx2", q, sc, out, ms);
    assert!(
        n == 0 || (n - 1) * stride + at + hd <= k.len().min(v.len()),
        "attend_heads_avx2: {n} positions of {hd} at {at} (stride {stride}) overrun the caches"
    );
    // Wrapping: with no positions, `at` may lie past the caches' ends.
    let kv = (k.as_ptr().wrapping_add(at), v.as_ptr().wrapping_add(at));
    let mut h = 0;
    while h < g {
        let part = Heads {
            q: &q[h * hd..],
            sc: &mut sc[h * n..],
            out: &mut out[h * hd..],
            ms: &mut ms[2 * h..],
        };
        // Registers: three heads' 4-key score sums or 32-float outputs are 12 accumulators.
        // An f32 cache goes one head at a time: there the group saves only loads, and over 1024
        // tokens it ran 0.977x; an f16 one goes by groups, so each widening serves every head.
        let together = if std::mem::size_of::<T>() == 4 {
            1
        } else {
            g - h
        };
        h += match together {
            1 => attend_group::<T, 1, 8>(part, kv, stride, hd, n, scale),
            2 => attend_group::<T, 2, 4>(part, kv, stride, hd, n, scale),
            _ => attend_group::<T, 3, 4>(part, kv, stride, hd, n, scale),
        };
    }
}

/// The buffers of the heads [`attend_group`] takes, from the first of them on.
struct Heads<'a> {
    q: &'a [f32],
    sc: &'a mut [f32],
    out: &'a mut [f32],
    ms: &'a mut [f32],
}

/// [`attend_heads_avx2`] for `NH` heads, whose outputs are summed `8 * C` floats at a time;
/// returns `NH`. `k` and `v` point at the key-value head's slice of position 0's row.
#[inline(always)]
unsafe fn attend_group<T: KvElem, const NH: usize, const C: usize>(
    b: Heads,
    (k, v): (*const T, *const T),
    stride: usize,
    hd: usize,
    n: usize,
    scale: f32,
) -> usize {
    let h8 = hd / 8 * 8;
    let qp = |h: usize, i: usize| b.q.as_ptr().add(h * hd + i);
    // The elements past the last whole vector of a head (none for heads of 64, 128: then no
    // call at all, where an empty one per key and head was 0.7% of int4w's decode).
    let tail = |h: usize, key: *const T| {
        if h8 == hd {
            return 0.0;
        }
        let q_rest = std::slice::from_raw_parts(qp(h, h8), hd - h8);
        reference::dot_kv_ref(q_rest, std::slice::from_raw_parts(key.add(h8), hd - h8))
    };
    let mut t = 0;
    while t + 4 <= n {
        let kp: [*const T; 4] = std::array::from_fn(|j| k.add((t + j) * stride));
        let mut a = [[_mm256_setzero_ps(); 4]; NH];
        let mut i = 0;
        while i < h8 {
            for (j, kj) in kp.iter().enumerate() {
                let kv = T::load8(kj.add(i));
                for (h, ah) in a.iter_mut().enumerate() {
                    ah[j] = _mm256_fmadd_ps(_mm256_loadu_ps(qp(h, i)), kv, ah[j]);
                }
            }
            i += 8;
        }
        for (h, ah) in a.iter().enumerate() {
            // Lane j of `s` ends up as key j's sum.
            let s = _mm256_hadd_ps(_mm256_hadd_ps(ah[0], ah[1]), _mm256_hadd_ps(ah[2], ah[3]));
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let mut four = [0.0f32; 4];
            _mm_storeu_ps(four.as_mut_ptr(), s);
            for (j, f) in four.into_iter().enumerate() {
                *b.sc.get_unchecked_mut(h * n + t + j) = (f + tail(h, kp[j])) * scale;
            }
        }
        t += 4;
    }
    for t in t..n {
        let kp = k.add(t * stride);
        let mut a = [_mm256_setzero_ps(); NH];
        let mut i = 0;
        while i < h8 {
            let kv = T::load8(kp.add(i));
            for (h, ah) in a.iter_mut().enumerate() {
                *ah = _mm256_fmadd_ps(_mm256_loadu_ps(qp(h, i)), kv, *ah);
            }
            i += 8;
        }
        for (h, ah) in a.iter().enumerate() {
            *b.sc.get_unchecked_mut(h * n + t) = (hsum_ps(*ah) + tail(h, kp)) * scale;
        }
    }
    for h in 0..NH {
        let (m, sum) = exp_shifted_avx2(&mut b.sc[h * n..(h + 1) * n]);
        (b.ms[2 * h], b.ms[2 * h + 1]) = (m, sum);
    }
    // Values: `8 * C` output floats of every head held in registers across all keys.
    let val = |t: usize, i: usize| v.add(t * stride + i);
    let mut i = 0;
    while i + 8 * C <= hd {
        let mut acc = [[_mm256_setzero_ps(); C]; NH];
        for t in 0..n {
            let p: [__m256; NH] =
                std::array::from_fn(|h| _mm256_set1_ps(*b.sc.get_unchecked(h * n + t)));
            for c in 0..C {
                let x = T::load8(val(t, i + 8 * c));
                for (ah, &ph) in acc.iter_mut().zip(&p) {
                    ah[c] = _mm256_fmadd_ps(ph, x, ah[c]);
                }
            }
        }
        for (h, ah) in acc.iter().enumerate() {
            for (c, a) in ah.iter().enumerate() {
                _mm256_storeu_ps(b.out.as_mut_ptr().add(h * hd + i + 8 * c), *a);
            }
        }
        i += 8 * C;
    }
    while i + 8 <= hd {
        let mut acc = [_mm256_setzero_ps(); NH];
        for t in 0..n {
            let x = T::load8(val(t, i));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_set1_ps(*b.sc.get_unchecked(h * n + t)), x, *a);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(b.out.as_mut_ptr().add(h * hd + i), *a);
        }
        i += 8;
    }
    for h in 0..NH {
        for o in i..hd {
            b.out[h * hd + o] = (0..n)
                .map(|t| b.sc[h * n + t] * (*val(t, o)).to_f32())
                .sum();
        }
    }
    NH
}

// ---- GGUF block formats -------------------------------------------------------------------

use super::{f16_to_f32, lane_nibbles, u8x16_to_f32x8x2, unpack_nibbles};
use crate::kernels::blocks::{self as b, QK, QK_K};
use crate::kernels::int;

macro_rules! via_dequant_avx2 {
    ($name:ident, $block:ty, $elems:expr, $dequant:expr) => {
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[$block], x: &[f32], y: &mut [f32]) {
            // A bit-exact dequantization per block (the reference's, or Q6_K's AVX2 one),
            // then the AVX2 dot.
            crate::kernels::quant::gemv_blocks_with(
                $elems,
                $dequant,
                |a, b| dot_f32_avx2(a, b),
                w,
                x,
                y,
            )
        }
    };
}
via_dequant_avx2!(gemv_q3_k_avx2, b::BlockQ3K, QK_K, b::dequant_q3_k_ref);
via_dequant_avx2!(gemv_q4_k_avx2, b::BlockQ4K, QK_K, b::dequant_q4_k_ref);
via_dequant_avx2!(gemv_q5_k_avx2, b::BlockQ5K, QK_K, b::dequant_q5_k_ref);
via_dequant_avx2!(gemv_q6_k_avx2, b::BlockQ6K, QK_K, |w, out| {
    // SAFETY: only called inside `gemv_q6_k_avx2`, whose caller guarantees AVX2, FMA and F16C.
    unsafe { dequant_q6_k_avx2(w, out) }
});
via_dequant_avx2!(gemv_iq4_nl_avx2, b::BlockIQ4NL, QK, b::dequant_iq4_nl_ref);
via_dequant_avx2!(gemv_tq1_0_avx2, b::BlockTQ1_0, QK_K, b::dequant_tq1_0_ref);
via_dequant_avx2!(gemv_tq2_0_avx2, b::BlockTQ2_0, QK_K, b::dequant_tq2_0_ref);
via_dequant_avx2!(gemv_mxfp4_avx2, b::BlockMXFP4, QK, b::dequant_mxfp4_ref);

/// Checks a block GEMV's shape; returns blocks per row (0 means every `y` is 0).
pub(crate) fn blocks_per_row(name: &str, w_len: usize, cols: usize, rows: usize) -> usize {
    assert!(
        cols.is_multiple_of(QK),
        "{name}: {cols} columns are not whole {QK}-blocks"
    );
    assert_eq!(w_len, cols / QK * rows, "{name}: shape mismatch");
    cols / QK
}

/// Sum over a 32-weight block of `(a * q + c) * x`, where the block's quants are `q0..q3` (8 each,
/// in element order): `a * Σ q x + c * Σ x`, accumulated into `acc` without a horizontal step.
/// Q4_0 is `a = d, c = -8 d`; Q4_1 is `a = d, c = m`; Q8_0 is `a = d, c = 0`.
#[inline(always)]
unsafe fn block_fma(q: [__m256; 4], xp: *const f32, a: f32, c: f32, acc: __m256) -> __m256 {
    let x: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xp.add(8 * k)));
    let qx = _mm256_fmadd_ps(
        q[3],
        x[3],
        _mm256_fmadd_ps(
            q[2],
            x[2],
            _mm256_fmadd_ps(q[1], x[1], _mm256_mul_ps(q[0], x[0])),
        ),
    );
    let acc = _mm256_fmadd_ps(_mm256_set1_ps(a), qx, acc);
    if c == 0.0 {
        return acc;
    }
    let xs = _mm256_add_ps(_mm256_add_ps(x[0], x[1]), _mm256_add_ps(x[2], x[3]));
    _mm256_fmadd_ps(_mm256_set1_ps(c), xs, acc)
}

/// A 32-weight block that decodes to its quants (4 x 8 floats in element order) and the
/// `(a, c)` of [`block_fma`]. A trait with `#[inline(always)]` methods, not a closure, so the
/// decoding inlines into the `target_feature` callers (a closure here cost Q5_0 half its speed).
trait QkBlock {
    unsafe fn decode(&self) -> ([__m256; 4], f32, f32);
}

/// The row loop shared by the 32-weight block formats; the sum stays in one vector register
/// until the end of the row.
#[inline(always)]
unsafe fn gemv_qk_avx2<B: QkBlock>(name: &str, w: &[B], x: &[f32], y: &mut [f32]) {
    let nb = blocks_per_row(name, w.len(), x.len(), y.len());
    let ahead = Ahead::blocks::<B>(nb);
    for (r, yr) in y.iter_mut().enumerate() {
        let mut acc = _mm256_setzero_ps();
        let row = &w[r * nb..(r + 1) * nb];
        for (i, blk) in row.iter().enumerate() {
            ahead.part(row.as_ptr().cast(), i, 1);
            let (q, a, c) = blk.decode();
            acc = block_fma(q, x.as_ptr().add(i * QK), a, c, acc);
        }
        *yr = hsum_ps(acc);
    }
}

/// 16 bytes of nibbles as 4 x 8 floats in element order (low nibbles first).
#[inline(always)]
unsafe fn q4_quants(qs: &[u8; 16]) -> [__m256; 4] {
    let (lo, hi) = unpack_nibbles(qs.as_ptr());
    let ((q0, q1), (q2, q3)) = (u8x16_to_f32x8x2(lo), u8x16_to_f32x8x2(hi));
    [q0, q1, q2, q3]
}

/// Q4_0 · f32: value = `d * (q - 8)`. Nibbles are unpacked to floats in registers; the 4-bit
/// weights are the only bytes streamed from memory.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q4_0_avx2(w: &[b::BlockQ4_0], x: &[f32], y: &mut [f32]) {
    gemv_qk_avx2("gemv_q4_0_avx2", w, x, y)
}

impl QkBlock for b::BlockQ4_0 {
    #[inline(always)]
    unsafe fn decode(&self) -> ([__m256; 4], f32, f32) {
        let d = f16_to_f32(self.d);
        (q4_quants(&self.qs), d, -8.0 * d)
    }
}

/// Q4_1 · f32: value = `d * q + m`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q4_1_avx2(w: &[b::BlockQ4_1], x: &[f32], y: &mut [f32]) {
    gemv_qk_avx2("gemv_q4_1_avx2", w, x, y)
}

impl QkBlock for b::BlockQ4_1 {
    #[inline(always)]
    unsafe fn decode(&self) -> ([__m256; 4], f32, f32) {
        (q4_quants(&self.qs), f16_to_f32(self.d), f16_to_f32(self.m))
    }
}

/// Q8_0 · f32: value = `d * q`, signed bytes widened to floats in registers.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q8_0_avx2(w: &[b::BlockQ8_0], x: &[f32], y: &mut [f32]) {
    gemv_qk_avx2("gemv_q8_0_avx2", w, x, y)
}

impl QkBlock for b::BlockQ8_0 {
    #[inline(always)]
    unsafe fn decode(&self) -> ([__m256; 4], f32, f32) {
        let p = self.qs.as_ptr() as *const __m128i;
        let (a, c) = (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
        let q = [
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8))),
        ];
        (q, f16_to_f32(self.d), 0.0)
    }
}

/// The 32 5-bit quants of a Q5_0/Q5_1 block as 4 x 8 floats in element order: nibbles from `qs`,
/// plus 16 where bit `e` of `qh` is set for element `e`.
#[inline(always)]
unsafe fn q5_quants(qs: &[u8; 16], qh: [u8; 4]) -> [__m256; 4] {
    let [q0, q1, q2, q3] = q4_quants(qs);
    let qh = u32::from_le_bytes(qh) as i32;
    let shifts = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let one = _mm256_set1_epi32(1);
    let sixteen = _mm256_set1_ps(16.0);
    let high = |k: i32| {
        // Bits 8k..8k+8 of qh, one per lane, as 0.0 or 16.0.
        let bits = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(qh >> (8 * k)), shifts),
            one,
        );
        _mm256_mul_ps(_mm256_cvtepi32_ps(bits), sixteen)
    };
    [
        _mm256_add_ps(q0, high(0)),
        _mm256_add_ps(q1, high(1)),
        _mm256_add_ps(q2, high(2)),
        _mm256_add_ps(q3, high(3)),
    ]
}

/// Q5_0 · f32: value = `d * (q - 16)`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q5_0_avx2(w: &[b::BlockQ5_0], x: &[f32], y: &mut [f32]) {
    gemv_qk_avx2("gemv_q5_0_avx2", w, x, y)
}

impl QkBlock for b::BlockQ5_0 {
    #[inline(always)]
    unsafe fn decode(&self) -> ([__m256; 4], f32, f32) {
        let d = f16_to_f32(self.d);
        (q5_quants(&self.qs, self.qh), d, -16.0 * d)
    }
}

/// Q5_1 · f32: value = `d * q + m`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_q5_1_avx2(w: &[b::BlockQ5_1], x: &[f32], y: &mut [f32]) {
    gemv_qk_avx2("gemv_q5_1_avx2", w, x, y)
}

impl QkBlock for b::BlockQ5_1 {
    #[inline(always)]
    unsafe fn decode(&self) -> ([__m256; 4], f32, f32) {
        (
            q5_quants(&self.qs, self.qh),
            f16_to_f32(self.d),
            f16_to_f32(self.m),
        )
    }
}

/// A 32-weight block widened to 32 f32 at `out`, with the reference's operations in its order
/// (`d * (q - 8)`, `q * d + m`, ...: a multiply, then an add, no FMA), so the result is
/// bit-identical to `blocks::dequant_*_ref`. The batched GEMM widens every weight row this way.
trait WidenBlock {
    unsafe fn widen(&self, out: *mut f32);
}

/// Stores `expr` (with `v` bound to each of the 4 vectors of `q`) to 32 floats at `out`; a
/// macro, as a closure would not inline into the `target_feature` caller reliably.
macro_rules! store4 {
    ($out:expr, $q:expr, |$v:ident| $e:expr) => {{
        let q = $q;
        for k in 0..4 {
            let $v = q[k];
            _mm256_storeu_ps($out.add(8 * k), $e);
        }
    }};
}

impl WidenBlock for b::BlockQ4_0 {
    #[inline(always)]
    unsafe fn widen(&self, out: *mut f32) {
        let (q, d) = (q4_quants(&self.qs), _mm256_set1_ps(f16_to_f32(self.d)));
        let off = _mm256_set1_ps(-8.0);
        store4!(out, q, |q| _mm256_mul_ps(d, _mm256_add_ps(q, off)));
    }
}

impl WidenBlock for b::BlockQ4_1 {
    #[inline(always)]
    unsafe fn widen(&self, out: *mut f32) {
        let (q, d) = (q4_quants(&self.qs), _mm256_set1_ps(f16_to_f32(self.d)));
        let m = _mm256_set1_ps(f16_to_f32(self.m));
        store4!(out, q, |q| _mm256_add_ps(_mm256_mul_ps(q, d), m));
    }
}

impl WidenBlock for b::BlockQ5_0 {
    #[inline(always)]
    unsafe fn widen(&self, out: *mut f32) {
        let (q, d) = (
            q5_quants(&self.qs, self.qh),
            _mm256_set1_ps(f16_to_f32(self.d)),
        );
        let off = _mm256_set1_ps(-16.0);
        store4!(out, q, |q| _mm256_mul_ps(_mm256_add_ps(q, off), d));
    }
}

impl WidenBlock for b::BlockQ5_1 {
    #[inline(always)]
    unsafe fn widen(&self, out: *mut f32) {
        let (q, d) = (
            q5_quants(&self.qs, self.qh),
            _mm256_set1_ps(f16_to_f32(self.d)),
        );
        let m = _mm256_set1_ps(f16_to_f32(self.m));
        store4!(out, q, |q| _mm256_add_ps(_mm256_mul_ps(q, d), m));
    }
}

impl WidenBlock for b::BlockQ8_0 {
    #[inline(always)]
    unsafe fn widen(&self, out: *mut f32) {
        let (q, _, _) = self.decode();
        let d = _mm256_set1_ps(f16_to_f32(self.d));
        store4!(out, q, |q| _mm256_mul_ps(q, d));
    }
}

macro_rules! dequant_avx2 {
    ($name:ident, $block:ty) => {
        /// Widens blocks to f32, bit-identical to the reference (see `WidenBlock`).
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[$block], out: &mut [f32]) {
            assert_eq!(
                out.len(),
                w.len() * QK,
                concat!(stringify!($name), ": length mismatch")
            );
            for (i, blk) in w.iter().enumerate() {
                blk.widen(out.as_mut_ptr().add(i * QK));
            }
        }
    };
}
dequant_avx2!(dequant_q4_0_avx2, b::BlockQ4_0);
dequant_avx2!(dequant_q4_1_avx2, b::BlockQ4_1);
dequant_avx2!(dequant_q5_0_avx2, b::BlockQ5_0);
dequant_avx2!(dequant_q5_1_avx2, b::BlockQ5_1);
dequant_avx2!(dequant_q8_0_avx2, b::BlockQ8_0);

/// Widens Q6_K blocks to f32, bit-identical to [`b::dequant_q6_k_ref`]: each half's 32 lanes
/// of `ql` (twice) and `qh` give its four runs of 32 six-bit codes in four shifts and masks,
/// and each run of 8 is scaled by `d * scale` as the reference multiplies (no FMA). Prefill
/// widens the Q6_K rows of a Q4_K_M file this way; the scalar loop was a tenth of its samples.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q6_k_avx2(w: &[b::BlockQ6K], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        w.len() * QK_K,
        "dequant_q6_k_avx2: length mismatch"
    );
    let (m4, m30, m32) = (
        _mm256_set1_epi8(0x0f),
        _mm256_set1_epi8(0x30),
        _mm256_set1_epi8(32),
    );
    for (blk, o) in w.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(blk.d);
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(blk.ql.as_ptr().add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(blk.ql.as_ptr().add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(blk.qh.as_ptr().add(32 * n) as *const __m256i);
            // Each run's two high bits moved to bits 4-5. Byte shifts are done on 16-bit
            // lanes; the masks drop the bits that cross into the neighbouring byte.
            let h = [
                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                _mm256_and_si256(qh, m30),
                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
            ];
            let runs = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), h[0]),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), h[1]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h[2]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h[3]),
            ];
            let sc = &blk.scales[8 * n..8 * n + 8];
            for (j, q) in runs.into_iter().enumerate() {
                let q = _mm256_sub_epi8(q, m32);
                let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                let dst = o.as_mut_ptr().add(128 * n + 32 * j);
                for (h, half) in [lo, hi].into_iter().enumerate() {
                    // Elements 16 h .. 16 h + 16 of the run share scale `sc[h + 2 j]`.
                    let f = _mm256_set1_ps(d * sc[h + 2 * j] as f32);
                    let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(half));
                    let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(half)));
                    _mm256_storeu_ps(dst.add(16 * h), _mm256_mul_ps(a, f));
                    _mm256_storeu_ps(dst.add(16 * h + 8), _mm256_mul_ps(b, f));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clocher's int8 / int4 rows (layouts in `kernels::int`).

/// INT8 · f32: `d * sum(q x) + m * sum(x)`. The codes are widened to floats in registers, four
/// independent accumulators (32 weights a step) keep the FMA pipes busy, and `sum(x)` is taken
/// once per call, not once per row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_int8_avx2(w: &[u8], x: &[f32], y: &mut [f32]) {
    let rb = int::check_int8("gemv_int8_avx2", w, x, y);
    let cols = x.len();
    let xsum: f32 = x.iter().sum();
    let xp = x.as_ptr();
    let ahead = Ahead::new(rb, cols / 32);
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, m) = int::row_scales_f32(row);
        let qp = row.as_ptr().add(int::INT8_HEADER);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= cols {
            ahead.part(row.as_ptr(), i / 32, 1);
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * k;
                let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    qp.add(o) as *const __m128i
                )));
                *a = _mm256_fmadd_ps(q, _mm256_loadu_ps(xp.add(o)), *a);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum_ps(sum);
        for (j, &xj) in x.iter().enumerate().skip(i) {
            s += *qp.add(j) as f32 * xj;
        }
        *yr = d * s + m * xsum;
    }
}

/// INT4 · f32 with groups of `group`: per group `d * scales[g] * sum(q x)`, kept in a vector
/// until the row ends; the `dmin * mins[g] * sum_g(x)` term uses group sums taken once per call.
/// Each 16 bytes give 16 low-half and 16 high-half weights of the group (ggml's nibble order),
/// so the two halves' products go to separate registers and the chain stays short. Even and
/// odd groups scale into separate accumulators, and the `mins` term is summed apart in four
/// lanes: with groups of 32 a single accumulator chain (one dependent FMA per group) cost as
/// much as the unpacking.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_int4_avx2(group: usize, w: &[u8], x: &[f32], y: &mut [f32]) {
    gemv_int4_avx2_body::<false>(group, w, x, y)
}

/// [`gemv_int4_avx2`] over int4 g32 rows in the lane layout (`int::int4_to_lanes`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_int4_lanes_avx2(w: &[u8], x: &[f32], y: &mut [f32]) {
    gemv_int4_avx2_body::<true>(int::LANE_GROUP, w, x, y)
}

/// The body of [`gemv_int4_avx2`] and [`gemv_int4_lanes_avx2`]: a group's codes come from
/// [`int4_codes`].
#[inline(always)]
unsafe fn gemv_int4_avx2_body<const LANES: bool>(group: usize, w: &[u8], x: &[f32], y: &mut [f32]) {
    let name = if LANES {
        "gemv_int4_lanes_avx2"
    } else {
        "gemv_int4_avx2"
    };
    let rb = int::check_int4(name, group, w, x, y);
    let ng = x.len() / group;
    let half = group / 2;
    let xs = int::group_sums(x, group);
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, dmin, scales, mins, qs) = int::int4_row(row, ng);
        let mut acc = [_mm256_setzero_ps(); 2];
        for g in 0..ng {
            let xg = x.as_ptr().add(g * group);
            let (mut v0, mut v1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c < half {
                let (lo, hi) = int4_codes::<LANES>(qs, (ng, half), g, c);
                let ((q0, q1), (q2, q3)) = (u8x16_to_f32x8x2(lo), u8x16_to_f32x8x2(hi));
                v0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(xg.add(c)), v0);
                v1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xg.add(c + 8)), v1);
                v0 = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xg.add(half + c)), v0);
                v1 = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xg.add(half + c + 8)), v1);
                c += 16;
            }
            let step = _mm256_set1_ps(d * *scales.get_unchecked(g) as f32);
            let a = &mut acc[g & 1];
            *a = _mm256_fmadd_ps(step, _mm256_add_ps(v0, v1), *a);
        }
        *yr = hsum_ps(_mm256_add_ps(acc[0], acc[1])) - dmin * int::mins_dot(mins, &xs);
    }
}

/// Widens int4 rows to f32 (the batched GEMM's row scratch): `q * step - off` per group, 32
/// weights per 16 bytes, as [`int::dequant_int4_ref`] up to the FMA's single rounding.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `group` must be a positive multiple of 32
/// dividing `cols` (`int::dequant_int4` checks it).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_int4_avx2(group: usize, cols: usize, w: &[u8], out: &mut [f32]) {
    dequant_int4_avx2_body::<false>(group, cols, w, out)
}

/// [`dequant_int4_avx2`] of int4 g32 rows in the lane layout (`int::int4_to_lanes`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `cols` must be a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_int4_lanes_avx2(cols: usize, w: &[u8], out: &mut [f32]) {
    dequant_int4_avx2_body::<true>(int::LANE_GROUP, cols, w, out)
}

/// Bytes `c..c + 16` of group `g` of a row's nibbles `qs` (`ng` groups) split into its low and
/// high weights, one per byte, as [`unpack_nibbles`] gives them; with `LANES` (groups of 32),
/// the groups in whole runs of eight come from [`lane_nibbles`] in the same order.
#[inline(always)]
unsafe fn int4_codes<const LANES: bool>(
    qs: &[u8],
    (ng, half): (usize, usize),
    g: usize,
    c: usize,
) -> (__m128i, __m128i) {
    let run = g / int::LANE_RUN;
    if LANES && run < ng / int::LANE_RUN {
        lane_nibbles(qs.as_ptr().add(run * 16 * int::LANE_RUN), g % int::LANE_RUN)
    } else {
        unpack_nibbles(qs.as_ptr().add(g * half + c))
    }
}

/// The body of [`dequant_int4_avx2`] and [`dequant_int4_lanes_avx2`].
#[inline(always)]
unsafe fn dequant_int4_avx2_body<const LANES: bool>(
    group: usize,
    cols: usize,
    w: &[u8],
    out: &mut [f32],
) {
    let rb = int::int4_row_bytes(cols, group);
    assert_eq!(w.len() / rb * cols, out.len(), "dequant_int4_avx2: shape");
    let (ng, half) = (cols / group, group / 2);
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        let (d, dmin, scales, mins, qs) = int::int4_row(row, ng);
        for g in 0..ng {
            let step = _mm256_set1_ps(d * scales[g] as f32);
            let off = _mm256_set1_ps(-dmin * mins[g] as f32);
            let og = o.as_mut_ptr().add(g * group);
            let mut c = 0;
            while c < half {
                let (lo, hi) = int4_codes::<LANES>(qs, (ng, half), g, c);
                let ((q0, q1), (q2, q3)) = (u8x16_to_f32x8x2(lo), u8x16_to_f32x8x2(hi));
                _mm256_storeu_ps(og.add(c), _mm256_fmadd_ps(q0, step, off));
                _mm256_storeu_ps(og.add(c + 8), _mm256_fmadd_ps(q1, step, off));
                _mm256_storeu_ps(og.add(half + c), _mm256_fmadd_ps(q2, step, off));
                _mm256_storeu_ps(og.add(half + c + 8), _mm256_fmadd_ps(q3, step, off));
                c += 16;
            }
        }
    }
}

/// Widens int8 rows to f32: `q * d + m`, 32 codes a step. The batched GEMM widens every weight
/// row through here, so its loop is unrolled by hand with one index: 8 codes a step compiled to
/// eight induction variables and four cycles per step, a quarter of int8w's prefill.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dequant_int8_avx2(cols: usize, w: &[u8], out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    let rb = int::int8_row_bytes(cols);
    assert_eq!(w.len() / rb * cols, out.len(), "dequant_int8_avx2: shape");
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        let (d, m) = int::row_scales_f32(row);
        let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
        let (qp, op) = (row.as_ptr().add(int::INT8_HEADER), o.as_mut_ptr());
        let widen = |i: usize| {
            let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                qp.add(i) as *const __m128i
            )));
            _mm256_storeu_ps(op.add(i), _mm256_fmadd_ps(q, dv, mv));
        };
        let mut i = 0;
        while i + 32 <= cols {
            widen(i);
            widen(i + 8);
            widen(i + 16);
            widen(i + 24);
            i += 32;
        }
        while i + 8 <= cols {
            widen(i);
            i += 8;
        }
        for (j, o) in o.iter_mut().enumerate().skip(i) {
            *o = d * *qp.add(j) as f32 + m;
        }
    }
}

/// [`reference::exp_shifted_ref`] eight lanes at a time, with [`exp_ps`]: the scalar `exp`
/// calls of the scores and of SwiGLU were 1% of int4w's decode samples.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted_avx2(x: &mut [f32]) -> (f32, f32) {
    let n8 = x.len() / 8 * 8;
    let p = x.as_mut_ptr();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..n8).step_by(8) {
        m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
    }
    let max = x[n8..].iter().fold(hmax_ps(m), |a, &v| a.max(v));
    let (mv, mut s) = (_mm256_set1_ps(max), _mm256_setzero_ps());
    for i in (0..n8).step_by(8) {
        let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
        _mm256_storeu_ps(p.add(i), e);
        s = _mm256_add_ps(s, e);
    }
    let mut sum = hsum_ps(s);
    for v in &mut x[n8..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    (max, sum)
}

/// [`reference::silu_mul_ref`] eight lanes at a time: `gate = silu(gate) * up`. The scalar
/// loop, with its `exp` calls, was 2% of int4w's decode samples.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul_avx2: lengths differ");
    let n8 = gate.len() / 8 * 8;
    let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    for i in (0..n8).step_by(8) {
        let x = _mm256_loadu_ps(g.add(i));
        let sig = _mm256_div_ps(
            x,
            _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x))),
        );
        _mm256_storeu_ps(g.add(i), _mm256_mul_ps(sig, _mm256_loadu_ps(u.add(i))));
    }
    reference::silu_mul_ref(&mut gate[n8..], &up[n8..]);
}

/// [`reference::rmsnorm_ref`] eight lanes at a time. The reference's sum of squares is one
/// chain of dependent adds (a microsecond a row of 576); decode runs two a block on one thread
/// while the other waits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rmsnorm_avx2(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == w.len() && x.len() == out.len(),
        "rmsnorm_avx2: lengths differ"
    );
    if x.is_empty() {
        return;
    }
    let n8 = x.len() / 8 * 8;
    let (xp, wp, op) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    let mut s = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        let v = _mm256_loadu_ps(xp.add(i));
        s = _mm256_fmadd_ps(v, v, s);
    }
    let ss = x[n8..].iter().fold(hsum_ps(s), |a, v| a + v * v);
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    let iv = _mm256_set1_ps(inv);
    for i in (0..n8).step_by(8) {
        let v = _mm256_mul_ps(_mm256_loadu_ps(xp.add(i)), iv);
        _mm256_storeu_ps(op.add(i), _mm256_mul_ps(_mm256_loadu_ps(wp.add(i)), v));
    }
    for ((o, x), w) in out[n8..].iter_mut().zip(&x[n8..]).zip(&w[n8..]) {
        *o = w * (x * inv);
    }
}
