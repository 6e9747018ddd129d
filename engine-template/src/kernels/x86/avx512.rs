//! AVX-512 (F + BW) kernels, same signatures as their `reference` twins. 16 lanes a register:
//! on cores that split 512-bit ops in two (AMD Zen 4) the gain is fewer instructions per byte
//! streamed, which is what a decode GEMV is short of once the weights are 4 or 8 bits.

use crate::kernels::int;
use std::arch::x86_64::*;

/// 16 bytes widened to 16 f32 (unsigned).
#[inline(always)]
unsafe fn u8x16_to_f32x16(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
}

/// INT8 · f32: as `gemv_int8_avx2`, 64 weights a step in four accumulators.
///
/// # Safety
/// The CPU must support AVX-512 F and BW, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn gemv_int8_avx512(w: &[u8], x: &[f32], y: &mut [f32]) {
    let rb = int::check_int8("gemv_int8_avx512", w, x, y);
    let cols = x.len();
    let xsum: f32 = x.iter().sum();
    let xp = x.as_ptr();
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, m) = int::row_scales_f32(row);
        let qp = row.as_ptr().add(int::INT8_HEADER);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= cols {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = i + 16 * k;
                let q = u8x16_to_f32x16(_mm_loadu_si128(qp.add(o) as *const __m128i));
                *a = _mm512_fmadd_ps(q, _mm512_loadu_ps(xp.add(o)), *a);
            }
            i += 64;
        }
        while i + 16 <= cols {
            let q = u8x16_to_f32x16(_mm_loadu_si128(qp.add(i) as *const __m128i));
            acc[0] = _mm512_fmadd_ps(q, _mm512_loadu_ps(xp.add(i)), acc[0]);
            i += 16;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut s = _mm512_reduce_add_ps(sum);
        for (j, &xj) in x.iter().enumerate().skip(i) {
            s += *qp.add(j) as f32 * xj;
        }
        *yr = d * s + m * xsum;
    }
}

/// INT4 · f32: as `gemv_int4_avx2` (two accumulators, `mins` term apart); each 16 bytes are one 16-lane register of low-half
/// weights and one of high-half weights.
///
/// # Safety
/// The CPU must support AVX-512 F and BW, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn gemv_int4_avx512(group: usize, w: &[u8], x: &[f32], y: &mut [f32]) {
    let rb = int::check_int4("gemv_int4_avx512", group, w, x, y);
    let ng = x.len() / group;
    let half = group / 2;
    let xs = int::group_sums(x, group);
    let mask = _mm_set1_epi8(0x0f);
    for (row, yr) in w.chunks_exact(rb).zip(y.iter_mut()) {
        let (d, dmin, scales, mins, qs) = int::int4_row(row, ng);
        let mut acc = [_mm512_setzero_ps(); 2];
        for g in 0..ng {
            let xg = x.as_ptr().add(g * group);
            let qg = qs.as_ptr().add(g * half);
            let (mut v0, mut v1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            while c < half {
                let bytes = _mm_loadu_si128(qg.add(c) as *const __m128i);
                let lo = u8x16_to_f32x16(_mm_and_si128(bytes, mask));
                let hi = u8x16_to_f32x16(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask));
                v0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xg.add(c)), v0);
                v1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg.add(half + c)), v1);
                c += 16;
            }
            let step = _mm512_set1_ps(d * *scales.get_unchecked(g) as f32);
            let a = &mut acc[g & 1];
            *a = _mm512_fmadd_ps(step, _mm512_add_ps(v0, v1), *a);
        }
        *yr = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - dmin * int::mins_dot(mins, &xs);
    }
}
