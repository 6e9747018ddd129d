//! x86-64 SIMD kernels and the small intrinsic helpers they share.

pub mod avx2;

use std::arch::x86_64::*;

/// Sum of the 8 lanes.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
pub unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 8 bf16 at `p` widened to f32: bf16 is the upper half of an f32, so zero-extend and shift.
///
/// # Safety
/// The CPU must support AVX2, and `p` must point to 8 readable elements.
#[inline(always)]
pub unsafe fn load_bf16x8(p: *const half::bf16) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

/// 8 f16 at `p` widened to f32 (F16C).
///
/// # Safety
/// The CPU must support F16C, and `p` must point to 8 readable elements.
#[inline(always)]
pub unsafe fn load_f16x8(p: *const half::f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}
