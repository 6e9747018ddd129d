//! The 8-bit activation path for int8 / int4 weights and GGUF Q8_0 / Q4_1 blocks: activations are quantized to i8 in blocks
//! of 16 (one f32 scale each), and each 32 weights take one `vpdpbusd` (u8 codes × i8
//! activations, summed in i32) instead of widening every code to f32 and running four FMAs.
//! The `mins` / `m` terms still use the exact f32 sums of the activations.
//!
//! Needs AVX-512 VNNI and VL (the 256-bit `vpdpbusd`) on top of AVX2.

use super::avx2::blocks_per_row;
use super::{f16_to_f32, hsum_ps, unpack_nibbles};
use crate::kernels::blocks::{BlockQ4_1, BlockQ8_0, QK};
use crate::kernels::int;
use std::arch::x86_64::*;

/// Activations quantized for one GEMV: 32 codes and 8 lane scales per 32-weight chunk.
struct ActQ8 {
    /// Chunk k: 32 i8 codes, in the order the weight chunk's bytes pair them with.
    q: Vec<i8>,
    /// Chunk k: the scale of each i32 lane of `vpdpbusd` (lanes 0-3 sum the chunk's first 16
    /// codes, lanes 4-7 the last 16).
    d: Vec<f32>,
}

/// Quantizes 16 floats at `p` to i8 codes at `out` with scale `max|x| / 127`; returns it.
#[inline(always)]
unsafe fn quant16(p: *const f32, out: *mut i8) -> f32 {
    let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
    let sign = _mm256_set1_ps(-0.0);
    let m = _mm256_max_ps(_mm256_andnot_ps(sign, a), _mm256_andnot_ps(sign, b));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    // Round to nearest, then pack i32 -> i16 -> i8 (saturating; |code| <= 127 already).
    let qa = _mm256_cvtps_epi32(_mm256_mul_ps(a, id));
    let qb = _mm256_cvtps_epi32(_mm256_mul_ps(b, id));
    let w = _mm256_packs_epi32(qa, qb); // lanes: a0-3 b0-3 | a4-7 b4-7
    let w = _mm256_permute4x64_epi64(w, 0b11_01_10_00); // a0-3 a4-7 b0-3 b4-7
    let bytes = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(out as *mut __m128i, bytes);
    d
}

/// Quantizes `x` for weights whose 32-weight chunks pair bytes `c..c+16` of a group's codes
/// with activations `at(k, 0)..+16` and `at(k, 1)..+16`.
#[inline(always)]
unsafe fn quantize(x: &[f32], chunks: usize, at: impl Fn(usize, usize) -> usize) -> ActQ8 {
    let mut q = vec![0i8; chunks * 32];
    let mut d = vec![0.0f32; chunks * 8];
    for k in 0..chunks {
        for h in 0..2 {
            let s = quant16(
                x.as_ptr().add(at(k, h)),
                q.as_mut_ptr().add(k * 32 + 16 * h),
            );
            d[k * 8 + 4 * h..k * 8 + 4 * h + 4].fill(s);
        }
    }
    ActQ8 { q, d }
}

/// `sum(q x)` of one 32-weight chunk: one `vpdpbusd`, then the lane scales.
#[inline(always)]
unsafe fn chunk_dot(codes: __m256i, a: &ActQ8, k: usize, acc: __m256) -> __m256 {
    let xq = _mm256_loadu_si256(a.q.as_ptr().add(k * 32) as *const __m256i);
    let s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xq);
    _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(s),
        _mm256_loadu_ps(a.d.as_ptr().add(k * 8)),
        acc,
    )
}

/// INT4 · f32 through 8-bit activations (see the module docs). Same layout and signature as
/// `gemv_int4_avx2`; activations are quantized once per call.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn gemv_int4_vnni(group: usize, w: &[u8], x: &[f32], y: &mut [f32]) {
    let rb = int::check_int4("gemv_int4_vnni", group, w, x, y);
    let (ng, half) = (x.len() / group, group / 2);
    let per = half / 16; // chunks per group
    let xs = int::group_sums(x, group);
    let a = quantize(x, x.len() / 32, |k, h| {
        let (g, c) = (k / per, (k % per) * 16);
        g * group + h * half + c
    });
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, dmin, scales, mins, qs) = int::int4_row(row, ng);
        let mut acc = [_mm256_setzero_ps(); 2];
        for g in 0..ng {
            let mut v = _mm256_setzero_ps();
            for j in 0..per {
                let k = g * per + j;
                let (lo, hi) = unpack_nibbles(qs.as_ptr().add(k * 16));
                v = chunk_dot(_mm256_set_m128i(hi, lo), &a, k, v);
            }
            let step = _mm256_set1_ps(d * *scales.get_unchecked(g) as f32);
            let acc = &mut acc[g & 1];
            *acc = _mm256_fmadd_ps(step, v, *acc);
        }
        *yr = hsum_ps(_mm256_add_ps(acc[0], acc[1])) - dmin * int::mins_dot(mins, &xs);
    }
}

/// INT8 · f32 through 8-bit activations: `d * sum(q x) + m * sum(x)`, 32 codes a `vpdpbusd`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn gemv_int8_vnni(w: &[u8], x: &[f32], y: &mut [f32]) {
    let rb = int::check_int8("gemv_int8_vnni", w, x, y);
    let cols = x.len();
    let full = cols / 32;
    let xsum: f32 = x.iter().sum();
    let a = quantize(x, full, |k, h| k * 32 + 16 * h);
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, m) = int::row_scales_f32(row);
        let qp = row.as_ptr().add(int::INT8_HEADER);
        let mut acc = [_mm256_setzero_ps(); 2];
        for k in 0..full {
            let codes = _mm256_loadu_si256(qp.add(k * 32) as *const __m256i);
            acc[k & 1] = chunk_dot(codes, &a, k, acc[k & 1]);
        }
        let mut s = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
        for (j, &xj) in x.iter().enumerate().skip(full * 32) {
            s += *qp.add(j) as f32 * xj;
        }
        *yr = d * s + m * xsum;
    }
}

/// GGUF Q8_0 · f32 through 8-bit activations: `vpdpbusd` multiplies unsigned by signed bytes,
/// so the signed codes go in as `|q|` and the activations take `q`'s sign (llama.cpp's trick).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn gemv_q8_0_vnni(w: &[BlockQ8_0], x: &[f32], y: &mut [f32]) {
    let nb = blocks_per_row("gemv_q8_0_vnni", w.len(), x.len(), y.len());
    let a = quantize(x, nb, |k, h| k * QK + 16 * h);
    for (r, yr) in y.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); 2];
        for (k, b) in w[r * nb..(r + 1) * nb].iter().enumerate() {
            let codes = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
            let xq = _mm256_loadu_si256(a.q.as_ptr().add(k * 32) as *const __m256i);
            let s = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(codes, codes),
                _mm256_sign_epi8(xq, codes),
            );
            let scale = _mm256_mul_ps(
                _mm256_loadu_ps(a.d.as_ptr().add(k * 8)),
                _mm256_set1_ps(f16_to_f32(b.d)),
            );
            acc[k & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k & 1]);
        }
        *yr = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
    }
}

/// GGUF Q4_1 · f32 through 8-bit activations: `d * sum(q x) + m * sum(x)` per block, the
/// second with exact f32 block sums.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn gemv_q4_1_vnni(w: &[BlockQ4_1], x: &[f32], y: &mut [f32]) {
    let nb = blocks_per_row("gemv_q4_1_vnni", w.len(), x.len(), y.len());
    let a = quantize(x, nb, |k, h| k * QK + 16 * h);
    let xs = int::group_sums(x, QK);
    for (r, yr) in y.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut bias = [0.0f32; 2];
        for (k, b) in w[r * nb..(r + 1) * nb].iter().enumerate() {
            let (lo, hi) = unpack_nibbles(b.qs.as_ptr());
            let v = chunk_dot(_mm256_set_m128i(hi, lo), &a, k, _mm256_setzero_ps());
            acc[k & 1] = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b.d)), v, acc[k & 1]);
            bias[k & 1] += f16_to_f32(b.m) * xs[k];
        }
        *yr = hsum_ps(_mm256_add_ps(acc[0], acc[1])) + bias[0] + bias[1];
    }
}
