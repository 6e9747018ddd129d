//! Weight element types. A generated crate picks one as a type parameter, so the forward pass
//! is monomorphized for it and no dtype dispatch is left at run time.

use crate::format::Dtype;
use crate::kernels::{self, Isa};
use half::{bf16, f16};

/// A stored weight element type, with the GEMV and row conversion kernels for it.
pub trait WeightType: 'static + Send + Sync {
    type Elem: bytemuck::Pod + Send + Sync;
    const DTYPE: Dtype;
    /// `y[r] = dot(w[r*cols..][..cols], x)` for every row `r < y.len()`, where `cols = x.len()`.
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

impl WeightType for F32 {
    type Elem = f32;
    const DTYPE: Dtype = Dtype::F32;
    #[inline]
    fn gemv(isa: Isa, w: &[f32], x: &[f32], y: &mut [f32]) {
        kernels::gemv_f32(isa, w, x, y)
    }
    fn to_f32(w: &[f32], out: &mut [f32]) {
        out.copy_from_slice(w)
    }
}

impl WeightType for Bf16 {
    type Elem = bf16;
    const DTYPE: Dtype = Dtype::Bf16;
    #[inline]
    fn gemv(isa: Isa, w: &[bf16], x: &[f32], y: &mut [f32]) {
        kernels::gemv_bf16(isa, w, x, y)
    }
    fn to_f32(w: &[bf16], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(w) {
            *o = v.to_f32();
        }
    }
}

impl WeightType for F16 {
    type Elem = f16;
    const DTYPE: Dtype = Dtype::F16;
    #[inline]
    fn gemv(isa: Isa, w: &[f16], x: &[f32], y: &mut [f32]) {
        kernels::gemv_f16(isa, w, x, y)
    }
    fn to_f32(w: &[f16], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(w) {
            *o = v.to_f32();
        }
    }
}
