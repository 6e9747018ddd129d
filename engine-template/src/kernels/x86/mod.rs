//! x86-64 SIMD kernels and the small intrinsic helpers they share.

pub mod avx2;
pub mod avx2_q8;
pub mod avx512;

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

/// One f16 to f32 with F16C (the `half` crate would re-check CPU features on every call).
///
/// # Safety
/// The CPU must support F16C.
#[inline(always)]
pub unsafe fn f16_to_f32(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// 16 bytes of packed nibbles split into (low nibbles, high nibbles), one per byte.
///
/// # Safety
/// The CPU must support AVX2, and `p` must point to 16 readable bytes.
#[inline(always)]
pub unsafe fn unpack_nibbles(p: *const u8) -> (__m128i, __m128i) {
    let bytes = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    (
        _mm_and_si128(bytes, mask),
        _mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
    )
}

/// Bytes 0..8 and 8..16 of `v`, as two vectors of 8 f32 (unsigned).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
pub unsafe fn u8x16_to_f32x8x2(v: __m128i) -> (__m256, __m256) {
    (
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)),
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))),
    )
}
