//! GEMV over GGUF block formats with f32 activations: dequantization fused into the dot, f32
//! accumulation, so results match an exact dequantization up to summation order.
//!
//! Every format has a scalar `gemv_<fmt>_ref` (dequantize a block with the bit-exact
//! `blocks::dequant_*_ref`, then dot) and a `gemv_<fmt>_avx2`. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
//! have hand-written AVX2 bodies; the other formats' AVX2 versions dequantize each block with the
//! reference code and run the AVX2 dot on it.

use super::blocks::{self as b, QK, QK_K};
use super::{reference, Isa};

/// GEMV for a block format through a per-block dequantization (`dequant`) and a float `dot`:
/// the reference kernels use the scalar dot; formats without a hand-written SIMD body use this
/// with the SIMD dot.
#[inline(always)]
pub fn gemv_blocks_with<B: Copy>(
    elems: usize,
    dequant: fn(&[B], &mut [f32]),
    dot: impl Fn(&[f32], &[f32]) -> f32,
    w: &[B],
    x: &[f32],
    y: &mut [f32],
) {
    assert!(
        x.len().is_multiple_of(elems),
        "gemv_blocks: {} columns are not whole {elems}-blocks",
        x.len()
    );
    let nb = x.len() / elems;
    assert_eq!(w.len(), nb * y.len(), "gemv_blocks: shape mismatch");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let mut tmp = [0.0f32; QK_K];
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(nb)) {
        let mut sum = 0.0;
        for (blk, xc) in row.iter().zip(x.chunks_exact(elems)) {
            dequant(std::slice::from_ref(blk), &mut tmp[..elems]);
            sum += dot(&tmp[..elems], xc);
        }
        *yr = sum;
    }
}

macro_rules! quant_gemv {
    ($name:ident, $ref_name:ident, $avx2:ident, $block:ty, $elems:expr, $dequant:path) => {
        /// Scalar reference: dequantize each block (bit-exact with ggml), then dot.
        pub fn $ref_name(w: &[$block], x: &[f32], y: &mut [f32]) {
            gemv_blocks_with($elems, $dequant, reference::dot_f32_ref, w, x, y)
        }

        #[inline]
        pub fn $name(isa: Isa, w: &[$block], x: &[f32], y: &mut [f32]) {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime
                // feature detection, and both imply AVX2.
                Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2::$avx2(w, x, y) },
                _ => $ref_name(w, x, y),
            }
        }
    };
}

quant_gemv!(
    gemv_q4_0,
    gemv_q4_0_ref,
    gemv_q4_0_avx2,
    b::BlockQ4_0,
    QK,
    b::dequant_q4_0_ref
);
quant_gemv!(
    gemv_q4_1,
    gemv_q4_1_ref,
    gemv_q4_1_avx2,
    b::BlockQ4_1,
    QK,
    b::dequant_q4_1_ref
);
quant_gemv!(
    gemv_q5_0,
    gemv_q5_0_ref,
    gemv_q5_0_avx2,
    b::BlockQ5_0,
    QK,
    b::dequant_q5_0_ref
);
quant_gemv!(
    gemv_q5_1,
    gemv_q5_1_ref,
    gemv_q5_1_avx2,
    b::BlockQ5_1,
    QK,
    b::dequant_q5_1_ref
);
quant_gemv!(
    gemv_q8_0,
    gemv_q8_0_ref,
    gemv_q8_0_avx2,
    b::BlockQ8_0,
    QK,
    b::dequant_q8_0_ref
);
quant_gemv!(
    gemv_q3_k,
    gemv_q3_k_ref,
    gemv_q3_k_avx2,
    b::BlockQ3K,
    QK_K,
    b::dequant_q3_k_ref
);
quant_gemv!(
    gemv_q4_k,
    gemv_q4_k_ref,
    gemv_q4_k_avx2,
    b::BlockQ4K,
    QK_K,
    b::dequant_q4_k_ref
);
quant_gemv!(
    gemv_q5_k,
    gemv_q5_k_ref,
    gemv_q5_k_avx2,
    b::BlockQ5K,
    QK_K,
    b::dequant_q5_k_ref
);
quant_gemv!(
    gemv_q6_k,
    gemv_q6_k_ref,
    gemv_q6_k_avx2,
    b::BlockQ6K,
    QK_K,
    b::dequant_q6_k_ref
);
quant_gemv!(
    gemv_iq4_nl,
    gemv_iq4_nl_ref,
    gemv_iq4_nl_avx2,
    b::BlockIQ4NL,
    QK,
    b::dequant_iq4_nl_ref
);
quant_gemv!(
    gemv_tq1_0,
    gemv_tq1_0_ref,
    gemv_tq1_0_avx2,
    b::BlockTQ1_0,
    QK_K,
    b::dequant_tq1_0_ref
);
quant_gemv!(
    gemv_tq2_0,
    gemv_tq2_0_ref,
    gemv_tq2_0_avx2,
    b::BlockTQ2_0,
    QK_K,
    b::dequant_tq2_0_ref
);
quant_gemv!(
    gemv_mxfp4,
    gemv_mxfp4_ref,
    gemv_mxfp4_avx2,
    b::BlockMXFP4,
    QK,
    b::dequant_mxfp4_ref
);

macro_rules! dequant_on {
    ($name:ident, $model:ident, $avx2:ident, $block:ty, $ref_fn:path) => {
        /// [`$name`] on the process's ISA (a weight type's row widening).
        pub fn $model(w: &[$block], out: &mut [f32]) {
            $name(super::isa(), w, out)
        }

        /// Widens blocks to f32 on `isa` (the batched GEMM's weight rows), bit-identical to
        /// the reference.
        #[inline]
        pub fn $name(isa: Isa, w: &[$block], out: &mut [f32]) {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime
                // feature detection, and both imply AVX2.
                Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2::$avx2(w, out) },
                _ => $ref_fn(w, out),
            }
        }
    };
}
dequant_on!(
    dequant_q4_0,
    dequant_q4_0_model,
    dequant_q4_0_avx2,
    b::BlockQ4_0,
    b::dequant_q4_0_ref
);
dequant_on!(
    dequant_q4_1,
    dequant_q4_1_model,
    dequant_q4_1_avx2,
    b::BlockQ4_1,
    b::dequant_q4_1_ref
);
dequant_on!(
    dequant_q5_0,
    dequant_q5_0_model,
    dequant_q5_0_avx2,
    b::BlockQ5_0,
    b::dequant_q5_0_ref
);
dequant_on!(
    dequant_q5_1,
    dequant_q5_1_model,
    dequant_q5_1_avx2,
    b::BlockQ5_1,
    b::dequant_q5_1_ref
);
dequant_on!(
    dequant_q8_0,
    dequant_q8_0_model,
    dequant_q8_0_avx2,
    b::BlockQ8_0,
    b::dequant_q8_0_ref
);
dequant_on!(
    dequant_q6_k,
    dequant_q6_k_model,
    dequant_q6_k_avx2,
    b::BlockQ6K,
    b::dequant_q6_k_ref
);
