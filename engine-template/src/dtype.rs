//! Weight element types. A generated crate picks one per tensor as a type parameter, so the
//! forward pass is monomorphized for it and no format dispatch is left at run time.

use crate::format::Dtype;
use crate::kernels::blocks::{self as b, QK, QK_K};
use crate::kernels::{self, quant, Isa};
use half::{bf16, f16};

/// A stored weight type (a float or a GGUF block format), with its GEMV and row conversion.
pub trait WeightType: 'static + Send + Sync {
    /// One stored unit: a float, or one block of `BLOCK` weights.
    type Elem: bytemuck::Pod + Send + Sync;
    const DTYPE: Dtype;
    /// Weights per `Elem`.
    const BLOCK: usize;
    /// `y[r] = dot(row r, x)` for every `r < y.len()`; a row is `x.len() / BLOCK` elements.
    fn gemv(isa: Isa, w: &[Self::Elem], x: &[f32], y: &mut [f32]);
    /// Widen one row to f32 (embedding lookup).
    fn to_f32(w: &[Self::Elem], out: &mut [f32]);
}

/// 32-bit IEEE floats.
pub struct F32;
/// bfloat16: the upper half of an f32.
pub struct Bf16;
/// IEEE half precision.
pub struct F16;

macro_rules! float_weight {
    ($name:ident, $elem:ty, $dtype:expr, $gemv:path, $conv:expr) => {
        impl WeightType for $name {
            type Elem = $elem;
            const DTYPE: Dtype = $dtype;
            const BLOCK: usize = 1;
            #[inline]
            fn gemv(isa: Isa, w: &[$elem], x: &[f32], y: &mut [f32]) {
                $gemv(isa, w, x, y)
            }
            fn to_f32(w: &[$elem], out: &mut [f32]) {
                for (o, v) in out.iter_mut().zip(w) {
                    *o = $conv(*v);
                }
            }
        }
    };
}
float_weight!(F32, f32, Dtype::F32, kernels::gemv_f32, |v: f32| v);
float_weight!(Bf16, bf16, Dtype::BF16, kernels::gemv_bf16, bf16::to_f32);
float_weight!(F16, f16, Dtype::F16, kernels::gemv_f16, f16::to_f32);

macro_rules! block_weight {
    ($(#[$doc:meta])* $name:ident, $block:ty, $dtype:expr, $elems:expr, $dequant:path, $gemv:path) => {
        $(#[$doc])*
        pub struct $name;
        impl WeightType for $name {
            type Elem = $block;
            const DTYPE: Dtype = $dtype;
            const BLOCK: usize = $elems;
            #[inline]
            fn gemv(isa: Isa, w: &[$block], x: &[f32], y: &mut [f32]) {
                $gemv(isa, w, x, y)
            }
            fn to_f32(w: &[$block], out: &mut [f32]) {
                $dequant(w, out)
            }
        }
    };
}
block_weight!(/// GGUF Q4_0.
    Q4_0, b::BlockQ4_0, Dtype::Q4_0, QK, b::dequant_q4_0_ref, quant::gemv_q4_0);
block_weight!(/// GGUF Q4_1.
    Q4_1, b::BlockQ4_1, Dtype::Q4_1, QK, b::dequant_q4_1_ref, quant::gemv_q4_1);
block_weight!(/// GGUF Q5_0.
    Q5_0, b::BlockQ5_0, Dtype::Q5_0, QK, b::dequant_q5_0_ref, quant::gemv_q5_0);
block_weight!(/// GGUF Q5_1.
    Q5_1, b::BlockQ5_1, Dtype::Q5_1, QK, b::dequant_q5_1_ref, quant::gemv_q5_1);
block_weight!(/// GGUF Q8_0.
    Q8_0, b::BlockQ8_0, Dtype::Q8_0, QK, b::dequant_q8_0_ref, quant::gemv_q8_0);
block_weight!(/// GGUF Q3_K.
    Q3K, b::BlockQ3K, Dtype::Q3K, QK_K, b::dequant_q3_k_ref, quant::gemv_q3_k);
block_weight!(/// GGUF Q4_K.
    Q4K, b::BlockQ4K, Dtype::Q4K, QK_K, b::dequant_q4_k_ref, quant::gemv_q4_k);
block_weight!(/// GGUF Q5_K.
    Q5K, b::BlockQ5K, Dtype::Q5K, QK_K, b::dequant_q5_k_ref, quant::gemv_q5_k);
block_weight!(/// GGUF Q6_K.
    Q6K, b::BlockQ6K, Dtype::Q6K, QK_K, b::dequant_q6_k_ref, quant::gemv_q6_k);
block_weight!(/// GGUF IQ4_NL.
    IQ4NL, b::BlockIQ4NL, Dtype::IQ4NL, QK, b::dequant_iq4_nl_ref, quant::gemv_iq4_nl);
block_weight!(/// GGUF TQ1_0 (ternary).
    TQ1_0, b::BlockTQ1_0, Dtype::TQ1_0, QK_K, b::dequant_tq1_0_ref, quant::gemv_tq1_0);
block_weight!(/// GGUF TQ2_0 (ternary).
    TQ2_0, b::BlockTQ2_0, Dtype::TQ2_0, QK_K, b::dequant_tq2_0_ref, quant::gemv_tq2_0);
block_weight!(/// OCP MXFP4.
    MXFP4, b::BlockMXFP4, Dtype::MXFP4, QK, b::dequant_mxfp4_ref, quant::gemv_mxfp4);

/// The type name a generated crate uses for `d` (`clocher_engine::dtype::<name>`).
pub fn type_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "Bf16",
        Dtype::Q4_0 => "Q4_0",
        Dtype::Q4_1 => "Q4_1",
        Dtype::Q5_0 => "Q5_0",
        Dtype::Q5_1 => "Q5_1",
        Dtype::Q8_0 => "Q8_0",
        Dtype::Q3K => "Q3K",
        Dtype::Q4K => "Q4K",
        Dtype::Q5K => "Q5K",
        Dtype::Q6K => "Q6K",
        Dtype::IQ4NL => "IQ4NL",
        Dtype::TQ1_0 => "TQ1_0",
        Dtype::TQ2_0 => "TQ2_0",
        Dtype::MXFP4 => "MXFP4",
    }
}
