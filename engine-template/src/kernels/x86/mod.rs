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

/// Largest of the 8 lanes.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
pub unsafe fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `e^x` in each lane, within a few ulp of `f32::exp` (Cephes' `expf`: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, `e^r` by a polynomial, `2^n` written into the exponent bits). `x` is
/// first clamped to `[-87.3, 88.3]`: below, lanes come out near `1e-38` rather than smaller;
/// above, near `2e38` rather than larger (softmax and SiLU, its users, never get there).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline(always)]
pub unsafe fn exp_ps(x: __m256) -> __m256 {
    let x = _mm256_max_ps(
        _mm256_min_ps(x, _mm256_set1_ps(88.3)),
        _mm256_set1_ps(-87.3),
    );
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 in two parts, the first with few enough bits that `n` times it is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    // e^r = 1 + r + r^2 p(r).
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2 = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(e, _mm256_castsi256_ps(pow2))
}

/// 8 f32 at `p` (the [`crate::kernels::Widen`] of f32 rows).
///
/// # Safety
/// The CPU must support AVX, and `p` must point to 8 readable elements.
#[inline(always)]
pub unsafe fn load_f32x8(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// 8 bytes at `p` widened to 8 f32 lanes (unsigned: the group scales and mins of int4 and Q4_K).
///
/// # Safety
/// The CPU must support AVX2, and `p` must point to 8 readable bytes.
#[inline(always)]
pub unsafe fn load_u8x8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
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

/// Group `j`'s 32 codes in a run of eight groups in the lane layout (`int::int4_to_lanes`,
/// `run` its 128 bytes), one per byte in element order: (weights 0..16, weights 16..32), as
/// [`unpack_nibbles`] gives a plain group's. Lane `j` of each 32 bytes holds weights
/// `8 L..8 L + 4` (low nibbles) and `8 L + 4..8 L + 8` (high), so interleaving the halves' 32-bit
/// lanes puts them in order.
///
/// # Safety
/// The CPU must support AVX2, `j < 8`, and `run` must point to 128 readable bytes.
#[inline(always)]
pub unsafe fn lane_nibbles(run: *const u8, j: usize) -> (__m128i, __m128i) {
    let lane = |l: usize| (run.add(32 * l + 4 * j) as *const i32).read_unaligned();
    let bytes = _mm_setr_epi32(lane(0), lane(1), lane(2), lane(3));
    let mask = _mm_set1_epi8(0x0f);
    let (lo, hi) = (
        _mm_and_si128(bytes, mask),
        _mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
    );
    (_mm_unpacklo_epi32(lo, hi), _mm_unpackhi_epi32(lo, hi))
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
