//! AVX2 + FMA (+ F16C) kernels. Same signatures as their `reference` twins.
//!
//! Decode is memory-bound: each weight is read once per token. The dot loops therefore keep
//! four independent accumulators (32 floats a step) so FMA latency never stalls the stream, and
//! widen bf16/f16 in registers so only 2 bytes a weight cross the memory bus.

use super::{hsum_ps, load_bf16x8, load_f16x8};
use crate::kernels::reference;
use half::{bf16, f16};
use std::arch::x86_64::*;

macro_rules! dot_avx2 {
    ($name:ident, $elem:ty, $load:expr, $tail:path) => {
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[$elem], x: &[f32]) -> f32 {
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

#[inline(always)]
unsafe fn load_f32x8(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

dot_avx2!(dot_f32_avx2, f32, load_f32x8, reference::dot_f32_ref);
dot_avx2!(dot_bf16_avx2, bf16, load_bf16x8, reference::dot_bf16_ref);
dot_avx2!(dot_f16_avx2, f16, load_f16x8, reference::dot_f16_ref);

macro_rules! gemv_avx2 {
    ($name:ident, $elem:ty, $dot:ident) => {
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
            for (yr, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
                *yr = $dot(row, x);
            }
        }
    };
}
gemv_avx2!(gemv_f32_avx2, f32, dot_f32_avx2);
gemv_avx2!(gemv_bf16_avx2, bf16, dot_bf16_avx2);
gemv_avx2!(gemv_f16_avx2, f16, dot_f16_avx2);

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32_avx2: lengths differ");
    let n = x.len();
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        let yp = y.as_mut_ptr().add(i);
        _mm256_storeu_ps(
            yp,
            _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
        );
        i += 8;
    }
    reference::axpy_f32_ref(a, &x[i..], &mut y[i..]);
}
