//! Weight element types. A generated crate picks one per tensor as a type parameter, so the
//! forward pass is monomorphized for it and no format dispatch is left at run time.

use crate::format::Dtype;
use crate::kernels::act8::{self, ActQ8};
use crate::kernels::blocks::{self as b, GgmlType as Gt, QK, QK_K};
use crate::kernels::int::{self, RowI4, RowI8};
use crate::kernels::{self, quant, rows, Isa, Widen};
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
    /// What the batched GEMM's tiles read this type's rows as ([`WeightType::tile_row`]).
    type Tile: Widen;
    /// The row as the batched GEMM's tiles read it in place, widening eight elements at a
    /// time in registers (the float types). `None`: the GEMM widens a copy of the row to f32
    /// first (the block formats, int8, int4).
    fn tile_row(_w: &[Self::Elem]) -> Option<&[Self::Tile]> {
        None
    }
    /// Whether the type has [`WeightType::gemv_q8`]: decode then quantizes a token's
    /// activations to 8 bits once per op and runs integer dots (ADR 16).
    const ACT8: bool = false;
    /// `y[r] = dot(row r, x)` against 8-bit activations; called only where `ACT8` holds.
    fn gemv_q8(_isa: Isa, _w: &[Self::Elem], _x: &ActQ8, _y: &mut [f32]) {
        unreachable!("{:?} has no 8-bit activation GEMV", Self::DTYPE)
    }
    /// Whether the type has [`WeightType::gemm_q8`]: prefill then runs its GEMMs on 8-bit
    /// activations too. Types without it prefill on f32 activations, which beat their GEMV
    /// run once per token.
    const GEMM_Q8: bool = false;
    /// Whether the 8-bit kernels read the activations' lanes ([`ActQ8::lanes`]): the forward
    /// pass then fills them ([`ActQ8::fill_lanes`]) where it quantizes for this type.
    const LANES: bool = false;
    /// `y[i * rows + r] = dot(row r, xs[i])` for several tokens (`y` is `[xs.len(), rows]`):
    /// prefill's GEMM on 8-bit activations; called only where `GEMM_Q8` holds.
    fn gemm_q8(_isa: Isa, _w: &[Self::Elem], _xs: &[ActQ8], _y: &mut [f32]) {
        unreachable!("{:?} has no 8-bit activation GEMM", Self::DTYPE)
    }
}

/// 32-bit IEEE floats.
pub struct F32;
/// bfloat16: the upper half of an f32.
pub struct Bf16;
/// IEEE half precision.
pub struct F16;

macro_rules! float_weight {
    ($name:ident, $elem:ty, $dtype:expr, $gemv:path, $widen:expr) => {
        impl WeightType for $name {
            type Elem = $elem;
            const DTYPE: Dtype = $dtype;
            const BLOCK: usize = 1;
            type Tile = $elem;
            fn tile_row(w: &[$elem]) -> Option<&[$elem]> {
                Some(w)
            }
            #[inline]
            fn gemv(isa: Isa, w: &[$elem], x: &[f32], y: &mut [f32]) {
                $gemv(isa, w, x, y)
            }
            fn to_f32(w: &[$elem], out: &mut [f32]) {
                $widen(w, out)
            }
        }
    };
}
float_weight!(
    F32,
    f32,
    Dtype::Ggml(Gt::F32),
    kernels::gemv_f32,
    |w: &[f32], out: &mut [f32]| out.copy_from_slice(w)
);
float_weight!(
    Bf16,
    bf16,
    Dtype::Ggml(Gt::BF16),
    kernels::gemv_bf16,
    |w: &[bf16], out: &mut [f32]| kernels::widen_bf16(kernels::isa(), w, out)
);
float_weight!(
    F16,
    f16,
    Dtype::Ggml(Gt::F16),
    kernels::gemv_f16,
    |w: &[f16], out: &mut [f32]| kernels::widen_f16(kernels::isa(), w, out)
);

macro_rules! block_weight {
    ($(#[$doc:meta])* $name:ident, $block:ty, $dtype:expr, $elems:expr, $dequant:path, $gemv:path, act8: $q8:path, $gemm:path) => {
        block_weight!($(#[$doc])* $name, $block, $dtype, $elems, $dequant, $gemv, {
            const ACT8: bool = true;
            #[inline]
            fn gemv_q8(isa: Isa, w: &[$block], x: &ActQ8, y: &mut [f32]) {
                $q8(isa, w, x, y)
            }
            const GEMM_Q8: bool = true;
            #[inline]
            fn gemm_q8(isa: Isa, w: &[$block], xs: &[ActQ8], y: &mut [f32]) {
                $gemm(isa, w, xs, y)
            }
        });
    };
    ($(#[$doc:meta])* $name:ident, $block:ty, $dtype:expr, $elems:expr, $dequant:path, $gemv:path, act8: $q8:path) => {
        block_weight!($(#[$doc])* $name, $block, $dtype, $elems, $dequant, $gemv, {
            const ACT8: bool = true;
            #[inline]
            fn gemv_q8(isa: Isa, w: &[$block], x: &ActQ8, y: &mut [f32]) {
                $q8(isa, w, x, y)
            }
        });
    };
    ($(#[$doc:meta])* $name:ident, $block:ty, $dtype:expr, $elems:expr, $dequant:path, $gemv:path) => {
        block_weight!($(#[$doc])* $name, $block, $dtype, $elems, $dequant, $gemv, {});
    };
    ($(#[$doc:meta])* $name:ident, $block:ty, $dtype:expr, $elems:expr, $dequant:path, $gemv:path, {$($q8:tt)*}) => {
        $(#[$doc])*
        pub struct $name;
        impl WeightType for $name {
            type Elem = $block;
            type Tile = f32;
            const DTYPE: Dtype = $dtype;
            const BLOCK: usize = $elems;
            #[inline]
            fn gemv(isa: Isa, w: &[$block], x: &[f32], y: &mut [f32]) {
                $gemv(isa, w, x, y)
            }
            fn to_f32(w: &[$block], out: &mut [f32]) {
                $dequant(w, out)
            }
            $($q8)*
        }
    };
}
block_weight!(/// GGUF Q4_0.
    Q4_0, b::BlockQ4_0, Dtype::Ggml(Gt::Q4_0), QK, quant::dequant_q4_0_model, quant::gemv_q4_0,
    act8: act8::gemv_q4_0_q8, act8::gemm_q4_0_q8);
block_weight!(/// GGUF Q4_1.
    Q4_1, b::BlockQ4_1, Dtype::Ggml(Gt::Q4_1), QK, quant::dequant_q4_1_model, quant::gemv_q4_1,
    act8: act8::gemv_q4_1_q8, act8::gemm_q4_1_q8);
block_weight!(/// GGUF Q5_0.
    Q5_0, b::BlockQ5_0, Dtype::Ggml(Gt::Q5_0), QK, quant::dequant_q5_0_model, quant::gemv_q5_0,
    act8: act8::gemv_q5_0_q8);
block_weight!(/// GGUF Q5_1.
    Q5_1, b::BlockQ5_1, Dtype::Ggml(Gt::Q5_1), QK, quant::dequant_q5_1_model, quant::gemv_q5_1,
    act8: act8::gemv_q5_1_q8);
block_weight!(/// GGUF Q8_0.
    Q8_0, b::BlockQ8_0, Dtype::Ggml(Gt::Q8_0), QK, quant::dequant_q8_0_model, quant::gemv_q8_0,
    act8: act8::gemv_q8_0_q8, act8::gemm_q8_0_q8);
block_weight!(/// GGUF Q3_K.
    Q3K, b::BlockQ3K, Dtype::Ggml(Gt::Q3K), QK_K, b::dequant_q3_k_ref, quant::gemv_q3_k);
block_weight!(/// GGUF Q4_K.
    Q4K, b::BlockQ4K, Dtype::Ggml(Gt::Q4K), QK_K, b::dequant_q4_k_ref, quant::gemv_q4_k,
    act8: act8::gemv_q4_k_q8, act8::gemm_q4_k_q8);
block_weight!(/// GGUF Q5_K.
    Q5K, b::BlockQ5K, Dtype::Ggml(Gt::Q5K), QK_K, b::dequant_q5_k_ref, quant::gemv_q5_k);
block_weight!(/// GGUF Q6_K.
    Q6K, b::BlockQ6K, Dtype::Ggml(Gt::Q6K), QK_K, quant::dequant_q6_k_model, quant::gemv_q6_k,
    act8: act8::gemv_q6_k_q8);
block_weight!(/// GGUF IQ4_NL.
    IQ4NL, b::BlockIQ4NL, Dtype::Ggml(Gt::IQ4NL), QK, b::dequant_iq4_nl_ref, quant::gemv_iq4_nl);
block_weight!(/// GGUF TQ1_0 (ternary).
    TQ1_0, b::BlockTQ1_0, Dtype::Ggml(Gt::TQ1_0), QK_K, b::dequant_tq1_0_ref, quant::gemv_tq1_0);
block_weight!(/// GGUF TQ2_0 (ternary).
    TQ2_0, b::BlockTQ2_0, Dtype::Ggml(Gt::TQ2_0), QK_K, b::dequant_tq2_0_ref, quant::gemv_tq2_0);
block_weight!(/// OCP MXFP4.
    MXFP4, b::BlockMXFP4, Dtype::Ggml(Gt::MXFP4), QK, b::dequant_mxfp4_ref, quant::gemv_mxfp4);

/// Clocher int8 rows of `K` weights (layout in [`crate::kernels::int`]).
pub struct Int8<const K: usize>;

impl<const K: usize> WeightType for Int8<K> {
    type Elem = RowI8<K>;
    /// Widened copies: codes widened in the tiles, once per three tokens, made int8w's
    /// first token 5.6 ms later (widening a row once costs a store a vector, but only once).
    type Tile = f32;
    const DTYPE: Dtype = Dtype::Int8;
    const BLOCK: usize = K;
    #[inline]
    fn gemv(isa: Isa, w: &[RowI8<K>], x: &[f32], y: &mut [f32]) {
        int::gemv_int8(isa, bytemuck::cast_slice(w), x, y)
    }
    /// Rows that are whole activation blocks.
    const ACT8: bool = K.is_multiple_of(act8::QK8);
    #[inline]
    fn gemv_q8(isa: Isa, w: &[RowI8<K>], x: &ActQ8, y: &mut [f32]) {
        act8::gemv_int8_q8(isa, bytemuck::cast_slice(w), x, y)
    }
    fn to_f32(w: &[RowI8<K>], out: &mut [f32]) {
        int::dequant_int8(kernels::isa(), K, bytemuck::cast_slice(w), out)
    }
}

/// Clocher int4 rows of `2 * H` weights in `NG` groups of `G` (layout in
/// [`crate::kernels::int`]). `NG = K / G` and `H = K / 2` travel as their own parameters.
pub struct Int4<const G: usize, const NG: usize, const H: usize>;

impl<const G: usize, const NG: usize, const H: usize> Int4<G, NG, H> {
    const CHECK: () = {
        assert!(
            NG * G == 2 * H,
            "Int4<G, NG, H>: NG * G must equal the row length 2 * H"
        );
        assert!(
            G > 0 && G.is_multiple_of(int::INT4_GROUP_MULTIPLE),
            "Int4: G must be a multiple of 32"
        );
    };
}

impl<const G: usize, const NG: usize, const H: usize> WeightType for Int4<G, NG, H> {
    type Elem = RowI4<NG, H>;
    type Tile = f32;
    const DTYPE: Dtype = Dtype::Int4 {
        group: G,
        lanes: false,
    };
    const BLOCK: usize = {
        let () = Self::CHECK;
        2 * H
    };
    #[inline]
    fn gemv(isa: Isa, w: &[RowI4<NG, H>], x: &[f32], y: &mut [f32]) {
        int::gemv_int4(isa, G, bytemuck::cast_slice(w), x, y)
    }
    const ACT8: bool = true;
    #[inline]
    fn gemv_q8(isa: Isa, w: &[RowI4<NG, H>], x: &ActQ8, y: &mut [f32]) {
        act8::gemv_int4_q8(isa, G, bytemuck::cast_slice(w), x, y)
    }
    const GEMM_Q8: bool = true;
    #[inline]
    fn gemm_q8(isa: Isa, w: &[RowI4<NG, H>], xs: &[ActQ8], y: &mut [f32]) {
        act8::gemm_int4_q8(isa, G, bytemuck::cast_slice(w), xs, y)
    }
    fn to_f32(w: &[RowI4<NG, H>], out: &mut [f32]) {
        int::dequant_int4(kernels::isa(), G, 2 * H, bytemuck::cast_slice(w), out)
    }
}

/// Clocher int4 rows of `2 * H` weights in `NG` groups of 32, each whole run of eight groups in
/// the lane layout ([`int::int4_to_lanes`], ADR 44).
pub struct Int4Lanes<const NG: usize, const H: usize>;

impl<const NG: usize, const H: usize> Int4Lanes<NG, H> {
    const CHECK: () = assert!(
        NG * int::LANE_GROUP == 2 * H,
        "Int4Lanes<NG, H>: NG groups of 32 must make the row length 2 * H"
    );
}

impl<const NG: usize, const H: usize> WeightType for Int4Lanes<NG, H> {
    type Elem = RowI4<NG, H>;
    type Tile = f32;
    const DTYPE: Dtype = Dtype::Int4 {
        group: int::LANE_GROUP,
        lanes: true,
    };
    const BLOCK: usize = {
        let () = Self::CHECK;
        2 * H
    };
    #[inline]
    fn gemv(isa: Isa, w: &[RowI4<NG, H>], x: &[f32], y: &mut [f32]) {
        int::gemv_int4_lanes(isa, bytemuck::cast_slice(w), x, y)
    }
    const ACT8: bool = true;
    const LANES: bool = true;
    #[inline]
    fn gemv_q8(isa: Isa, w: &[RowI4<NG, H>], x: &ActQ8, y: &mut [f32]) {
        act8::gemm_int4_lanes_q8(isa, bytemuck::cast_slice(w), std::slice::from_ref(x), y)
    }
    const GEMM_Q8: bool = true;
    #[inline]
    fn gemm_q8(isa: Isa, w: &[RowI4<NG, H>], xs: &[ActQ8], y: &mut [f32]) {
        act8::gemm_int4_lanes_q8(isa, bytemuck::cast_slice(w), xs, y)
    }
    fn to_f32(w: &[RowI4<NG, H>], out: &mut [f32]) {
        int::dequant_int4_lanes(kernels::isa(), 2 * H, bytemuck::cast_slice(w), out)
    }
}

macro_rules! rows_weight {
    ($(#[$doc:meta])* $name:ident, $row:ident, $gt:expr) => {
        rows_weight!($(#[$doc])* $name, $row, $gt, Dtype::Rows($gt));
    };
    ($(#[$doc:meta])* $name:ident, $row:ident, $gt:expr, $dtype:expr) => {
        $(#[$doc])*
        pub struct $name<const NB: usize>;

        impl<const NB: usize> WeightType for $name<NB> {
            type Elem = rows::$row<NB>;
            type Tile = f32;
            const DTYPE: Dtype = $dtype;
            const BLOCK: usize = NB * QK;
            #[inline]
            fn gemv(isa: Isa, w: &[rows::$row<NB>], x: &[f32], y: &mut [f32]) {
                rows::gemv_rows(isa, $gt, Self::LANES, bytemuck::cast_slice(w), x, y)
            }
            const ACT8: bool = true;
            const LANES: bool = matches!($dtype, Dtype::RowsLanes(_));
            #[inline]
            fn gemv_q8(isa: Isa, w: &[rows::$row<NB>], x: &ActQ8, y: &mut [f32]) {
                let xs = std::slice::from_ref(x);
                act8::gemm_split_q8(isa, $gt, Self::LANES, bytemuck::cast_slice(w), xs, y)
            }
            const GEMM_Q8: bool = true;
            #[inline]
            fn gemm_q8(isa: Isa, w: &[rows::$row<NB>], xs: &[ActQ8], y: &mut [f32]) {
                act8::gemm_split_q8(isa, $gt, Self::LANES, bytemuck::cast_slice(w), xs, y)
            }
            fn to_f32(w: &[rows::$row<NB>], out: &mut [f32]) {
                rows::dequant_rows_ref($gt, Self::LANES, NB * QK, bytemuck::cast_slice(w), out)
            }
        }
    };
}
rows_weight!(/// GGUF Q4_0 rows of `NB` blocks, split by field ([`crate::kernels::rows`]).
    Q4_0Rows, RowQ4_0, Gt::Q4_0);
rows_weight!(/// GGUF Q4_1 rows of `NB` blocks, split by field ([`crate::kernels::rows`]).
    Q4_1Rows, RowQ4_1, Gt::Q4_1);
rows_weight!(/// GGUF Q5_0 rows of `NB` blocks, split by field ([`crate::kernels::rows`]).
    Q5_0Rows, RowQ5_0, Gt::Q5_0);
rows_weight!(/// GGUF Q5_1 rows of `NB` blocks, split by field ([`crate::kernels::rows`]).
    Q5_1Rows, RowQ5_1, Gt::Q5_1);
rows_weight!(/// GGUF Q4_0 rows of `NB` blocks, split by field, `qs` in the lane layout (ADR 45).
    Q4_0RowsLanes, RowQ4_0, Gt::Q4_0, Dtype::RowsLanes(Gt::Q4_0));
rows_weight!(/// GGUF Q4_1 rows of `NB` blocks, split by field, `qs` in the lane layout (ADR 45).
    Q4_1RowsLanes, RowQ4_1, Gt::Q4_1, Dtype::RowsLanes(Gt::Q4_1));

/// The type a generated crate uses for `d` in rows of `cols` (`clocher_engine::dtype::<name>`).
pub fn type_name(d: Dtype, cols: usize) -> String {
    let d = match d {
        Dtype::Ggml(t) => t,
        Dtype::Int8 => return format!("Int8<{cols}>"),
        Dtype::Int4 { group, lanes } => {
            return match lanes {
                true => format!("Int4Lanes<{}, {}>", cols / group, cols / 2),
                false => format!("Int4<{group}, {}, {}>", cols / group, cols / 2),
            }
        }
        Dtype::Rows(t) => return format!("{}Rows<{}>", type_name(Dtype::Ggml(t), cols), cols / QK),
        Dtype::RowsLanes(t) => {
            return format!(
                "{}RowsLanes<{}>",
                type_name(Dtype::Ggml(t), cols),
                cols / QK
            )
        }
    };
    match d {
        Gt::F32 => "F32",
        Gt::F16 => "F16",
        Gt::BF16 => "Bf16",
        Gt::Q4_0 => "Q4_0",
        Gt::Q4_1 => "Q4_1",
        Gt::Q5_0 => "Q5_0",
        Gt::Q5_1 => "Q5_1",
        Gt::Q8_0 => "Q8_0",
        Gt::Q3K => "Q3K",
        Gt::Q4K => "Q4K",
        Gt::Q5K => "Q5K",
        Gt::Q6K => "Q6K",
        Gt::IQ4NL => "IQ4NL",
        Gt::TQ1_0 => "TQ1_0",
        Gt::TQ2_0 => "TQ2_0",
        Gt::MXFP4 => "MXFP4",
    }
    .to_string()
}
