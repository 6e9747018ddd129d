//! The 8-bit activation path of the decode GEMVs (ADR 16): a token's activations are quantized
//! once per op to ggml's `block_q8_1` (32 codes, a scale `d` and `s = d * sum(qs)`, here in
//! f32), and each weight format dots its codes with them in integers: `vpmaddubsw` multiplies
//! 32 unsigned by 32 signed bytes into 16 pair sums, `vpmaddwd` folds those to 8 i32 lanes.
//! That replaces widening every weight to f32 and four FMAs per 32 weights, which is what the
//! f32 path spends its time on (llama.cpp runs its quantized formats the same way).
//!
//! Each result is the exact dot of the stored weights with the *quantized* activations, up to
//! float rounding: offset terms (`m`, `-8 d`, `-dmin * mins`) use `s`, the sum of the quantized
//! activations, not of the f32 ones, so the activation rounding error enters as `sum(w e)` and
//! never as `offset * sum(e)` (with int8's offset of about 128 steps that term dominated).
//!
//! Every kernel has a scalar `*_ref` (dequantize the weights exactly, dequantize the
//! activations, plain dot): the oracle and the fallback. The AVX2 bodies live in
//! `x86::avx2_q8`.

use super::blocks::{self as b, GgmlType, QK, QK_K};
use super::{int, rows};
use super::{reference, Isa};

/// Activations per block.
pub const QK8: usize = QK;

/// One token's activations quantized in blocks of [`QK8`] (structure of arrays, so a kernel
/// that needs only the sums reads them contiguously). Block `k`: codes `qs[32k..32k+32]` in
/// element order, value `d[k] * qs[i]`, `s[k] = d[k] * sum(qs[32k..32k+32])`. 8 bits an
/// activation plus 64 bits a block. `d = max|x| / 127` and codes round to nearest, ties to
/// even, as `vcvtps2dq` does, so the scalar and SIMD quantizers agree bit for bit.
#[derive(Debug, Clone, Default)]
pub struct ActQ8 {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    /// `qs` with each pair of blocks reordered to the nibble layout of int4 g32 rows and of two
    /// Q4_0 / Q4_1 blocks side by side ([`ActQ8::pairs`]), shared by every matrix and thread
    /// that reads these activations.
    pairs: Vec<i8>,
    /// Each pair of blocks' `d` in the lanes of their pair sums ([`ActQ8::d_pairs`]).
    d_pairs: Vec<f32>,
    /// `qs` with each run of eight blocks in the order of the lane layout of int4 g32 rows and
    /// split Q4 rows ([`ActQ8::lanes`]).
    lanes: Vec<i8>,
}

impl ActQ8 {
    /// Quantizes `x` (a whole number of blocks) into `self`, reusing its buffers.
    pub fn quantize(&mut self, isa: Isa, x: &[f32]) {
        assert!(
            x.len().is_multiple_of(QK8),
            "quantizing activations: {} is not a whole number of {QK8}-blocks",
            x.len()
        );
        let nb = x.len() / QK8;
        self.qs.resize(x.len(), 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
            // detection, and both imply AVX2.
            Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2_q8::quantize_q8_avx2(x, self) },
            _ => quantize_q8_ref(x, self),
        }
        // Built here, on the thread that quantizes, not on first use inside a parallel GEMV:
        // there a thread that found another building them waited on a futex.
        let h = QK8 / 2;
        self.pairs.resize(nb / 2 * 2 * QK8, 0);
        for (dst, src) in self
            .pairs
            .chunks_exact_mut(2 * QK8)
            .zip(self.qs.chunks_exact(2 * QK8))
        {
            dst[..h].copy_from_slice(&src[..h]);
            dst[h..2 * h].copy_from_slice(&src[QK8..QK8 + h]);
            dst[2 * h..3 * h].copy_from_slice(&src[h..QK8]);
            dst[3 * h..].copy_from_slice(&src[QK8 + h..]);
        }
        self.d_pairs.clear();
        let pairs = self.d.chunks_exact(2);
        self.d_pairs
            .extend(pairs.flat_map(|p| [p[0], p[0], p[0], p[0], p[1], p[1], p[1], p[1]]));
        // Quantizing again leaves no stale lanes behind (`lanes_sized` is then false).
        self.lanes.clear();
    }

    /// Fills [`ActQ8::lanes`] from the codes of the last [`ActQ8::quantize`]: only the kernels
    /// over the lane layout read them, so quantizing does not write them for every matrix.
    pub fn fill_lanes(&mut self) {
        // Each run of eight blocks as an 8 x 8 matrix of 4-byte units, transposed: unit `v` of
        // block `j` goes to place `8 v + j`.
        let run = int::LANE_RUN * QK8;
        self.lanes.resize(self.len() / run * run, 0);
        for (dst, src) in self
            .lanes
            .chunks_exact_mut(run)
            .zip(self.qs.chunks_exact(run))
        {
            for (k, unit) in dst.chunks_exact_mut(4).enumerate() {
                let (v, j) = (k / int::LANE_RUN, k % int::LANE_RUN);
                unit.copy_from_slice(&src[j * QK8 + 4 * v..j * QK8 + 4 * v + 4]);
            }
        }
    }

    /// Activations, the number of values.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// The codes of each pair of blocks in the order of 32 bytes of int4 g32 nibbles: both
    /// blocks' first halves (the low nibbles), then both second halves (the high nibbles). A
    /// trailing odd block is left out.
    pub fn pairs(&self) -> &[i8] {
        &self.pairs
    }

    /// Whether the block scales and sums, [`ActQ8::pairs`] and [`ActQ8::d_pairs`] are as long
    /// as the codes need: the last two are filled by [`ActQ8::quantize`] only, and the kernels
    /// that read them unchecked check this first.
    pub fn pairs_sized(&self) -> bool {
        let (nb, np) = (self.len() / QK8, self.len() / (2 * QK8));
        self.d.len() == nb
            && self.s.len() == nb
            && self.pairs.len() == np * 2 * QK8
            && self.d_pairs.len() == np * 8
    }

    /// [`ActQ8::pairs_sized`], and [`ActQ8::lanes`] filled ([`ActQ8::fill_lanes`]) for these
    /// codes.
    pub fn lanes_sized(&self) -> bool {
        let run = int::LANE_RUN * QK8;
        self.pairs_sized() && self.lanes.len() == self.len() / run * run
    }

    /// The codes of each whole run of eight blocks in the order of the lane layout of int4 g32
    /// rows ([`int::int4_to_lanes`]): 32 bytes `v` hold bytes `4 v..4 v + 4` of the eight
    /// blocks, block `j` in 32-bit lane `j`. Trailing blocks past the last whole run are left
    /// out. Empty until [`ActQ8::fill_lanes`].
    pub fn lanes(&self) -> &[i8] {
        &self.lanes
    }

    /// Each pair of blocks' scales in 8 lanes, as `vpmaddwd` leaves the pair sums of
    /// [`ActQ8::pairs`]: the first block's `d` in lanes 0-3, the second's in lanes 4-7. A
    /// trailing odd block is left out.
    pub fn d_pairs(&self) -> &[f32] {
        &self.d_pairs
    }

    /// The values the codes stand for (`d * q`).
    pub fn dequant(&self) -> Vec<f32> {
        self.qs
            .iter()
            .enumerate()
            .map(|(i, &q)| self.d[i / QK8] * q as f32)
            .collect()
    }
}

/// Scalar reference of [`ActQ8::quantize`]; `out`'s buffers must already have the sizes.
pub fn quantize_q8_ref(x: &[f32], out: &mut ActQ8) {
    for (k, xb) in x.chunks_exact(QK8).enumerate() {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in out.qs[k * QK8..(k + 1) * QK8].iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        out.d[k] = d;
        out.s[k] = d * sum as f32;
    }
}

/// The oracle of every 8-bit activation GEMV: each row widened by `dequant_row` (exact), then
/// dotted with the dequantized activations.
fn gemv_q8_ref_with(
    rows: usize,
    dequant_row: impl Fn(usize, &mut [f32]),
    x: &ActQ8,
    y: &mut [f32],
) {
    assert_eq!(y.len(), rows, "gemv_q8_ref: shape mismatch");
    let xd = x.dequant();
    let mut tmp = vec![0.0f32; xd.len()];
    for (r, yr) in y.iter_mut().enumerate() {
        dequant_row(r, &mut tmp);
        *yr = reference::dot_f32_ref(&tmp, &xd);
    }
}

/// Blocks of `elems` weights per row of a block format against `x`; panics on a shape
/// mismatch.
fn blocks_per_row(name: &str, elems: usize, w_len: usize, x: &ActQ8, rows: usize) -> usize {
    assert!(
        x.len().is_multiple_of(elems),
        "{name}: {} columns are not whole {elems}-blocks",
        x.len()
    );
    let nb = x.len() / elems;
    assert_eq!(
        w_len,
        nb * rows,
        "{name}: {w_len} blocks for {rows} rows of {nb}"
    );
    nb
}

/// Checks a batched 8-bit GEMM's shapes: `y` is `[xs.len(), rows]` and every token as long as
/// the first; returns `rows` (0 without tokens) and the first token.
fn gemm_rows<'x>(name: &str, xs: &'x [ActQ8], y_len: usize) -> (usize, Option<&'x ActQ8>) {
    let Some(x0) = xs.first() else {
        assert_eq!(y_len, 0, "{name}: outputs without tokens");
        return (0, None);
    };
    assert!(
        y_len.is_multiple_of(xs.len()),
        "{name}: {y_len} outputs for {} tokens",
        xs.len()
    );
    assert!(
        xs.iter().all(|x| x.len() == x0.len()),
        "{name}: tokens of different lengths"
    );
    (y_len / xs.len(), Some(x0))
}

/// The reference of every batched 8-bit GEMM: `gemv` (a reference GEMV) once per token.
fn gemm_q8_ref_with(xs: &[ActQ8], y: &mut [f32], gemv: impl Fn(&ActQ8, &mut [f32])) {
    if xs.is_empty() || y.is_empty() {
        return;
    }
    for (x, y) in xs.iter().zip(y.chunks_exact_mut(y.len() / xs.len())) {
        gemv(x, y)
    }
}

macro_rules! q8_gemv {
    ($(#[$doc:meta])* $name:ident, $ref_name:ident, $avx2:ident,
     $gemm:ident, $gemm_ref:ident, $gemm_avx2:ident, $block:ty, $elems:expr, $dequant:path) => {
        q8_gemv!($(#[$doc])* $name, $ref_name, $avx2, $block, $elems, $dequant);

        /// Scalar reference of the batched form: the reference GEMV once per token.
        pub fn $gemm_ref(w: &[$block], xs: &[ActQ8], y: &mut [f32]) {
            gemm_q8_ref_with(xs, y, |x, y| $ref_name(w, x, y))
        }

        /// The batched form (prefill): `y[i * rows + r] = dot(row r, xs[i])`, `y` being
        /// `[xs.len(), rows]`.
        #[inline]
        pub fn $gemm(isa: Isa, w: &[$block], xs: &[ActQ8], y: &mut [f32]) {
            let (rows, Some(x0)) = gemm_rows(stringify!($gemm), xs, y.len()) else { return };
            blocks_per_row(stringify!($gemm), $elems, w.len(), x0, rows);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as in the GEMV; the shapes are checked above.
                Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2_q8::$gemm_avx2(w, xs, y) },
                _ => $gemm_ref(w, xs, y),
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $ref_name:ident, $avx2:ident, $block:ty, $elems:expr, $dequant:path) => {
        /// Scalar reference: the exact weights against the dequantized activations.
        pub fn $ref_name(w: &[$block], x: &ActQ8, y: &mut [f32]) {
            let nb = blocks_per_row(stringify!($ref_name), $elems, w.len(), x, y.len());
            gemv_q8_ref_with(y.len(), |r, o| $dequant(&w[r * nb..(r + 1) * nb], o), x, y)
        }

        $(#[$doc])*
        #[inline]
        pub fn $name(isa: Isa, w: &[$block], x: &ActQ8, y: &mut [f32]) {
            blocks_per_row(stringify!($name), $elems, w.len(), x, y.len());
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime
                // feature detection, and both imply AVX2.
                Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2_q8::$avx2(w, x, y) },
                _ => $ref_name(w, x, y),
            }
        }
    };
}
q8_gemv!(/// GGUF Q4_0 weights · 8-bit activations.
    gemv_q4_0_q8, gemv_q4_0_q8_ref, gemv_q4_0_q8_avx2,
    gemm_q4_0_q8, gemm_q4_0_q8_ref, gemm_q4_0_q8_avx2, b::BlockQ4_0, QK, b::dequant_q4_0_ref);
q8_gemv!(/// GGUF Q4_1 weights · 8-bit activations.
    gemv_q4_1_q8, gemv_q4_1_q8_ref, gemv_q4_1_q8_avx2,
    gemm_q4_1_q8, gemm_q4_1_q8_ref, gemm_q4_1_q8_avx2, b::BlockQ4_1, QK, b::dequant_q4_1_ref);
q8_gemv!(/// GGUF Q5_0 weights · 8-bit activations.
    gemv_q5_0_q8, gemv_q5_0_q8_ref, gemv_q5_0_q8_avx2, b::BlockQ5_0, QK, b::dequant_q5_0_ref);
q8_gemv!(/// GGUF Q5_1 weights · 8-bit activations.
    gemv_q5_1_q8, gemv_q5_1_q8_ref, gemv_q5_1_q8_avx2, b::BlockQ5_1, QK, b::dequant_q5_1_ref);
q8_gemv!(/// GGUF Q8_0 weights · 8-bit activations.
    gemv_q8_0_q8, gemv_q8_0_q8_ref, gemv_q8_0_q8_avx2,
    gemm_q8_0_q8, gemm_q8_0_q8_ref, gemm_q8_0_q8_avx2, b::BlockQ8_0, QK, b::dequant_q8_0_ref);
q8_gemv!(/// GGUF Q4_K weights · 8-bit activations (each 32-weight group is one activation block).
    gemv_q4_k_q8, gemv_q4_k_q8_ref, gemv_q4_k_q8_avx2,
    gemm_q4_k_q8, gemm_q4_k_q8_ref, gemm_q4_k_q8_avx2, b::BlockQ4K, QK_K, b::dequant_q4_k_ref);
q8_gemv!(/// GGUF Q6_K weights · 8-bit activations (two 16-weight groups to an activation block).
    gemv_q6_k_q8, gemv_q6_k_q8_ref, gemv_q6_k_q8_avx2, b::BlockQ6K, QK_K, b::dequant_q6_k_ref);

/// Scalar reference: int8 rows against the dequantized activations.
pub fn gemv_int8_q8_ref(w: &[u8], x: &ActQ8, y: &mut [f32]) {
    let (cols, rb) = (x.len(), int::int8_row_bytes(x.len()));
    assert_eq!(w.len(), rb * y.len(), "gemv_int8_q8_ref: shape mismatch");
    gemv_q8_ref_with(
        y.len(),
        |r, o| int::dequant_int8_ref(cols, &w[r * rb..(r + 1) * rb], o),
        x,
        y,
    )
}

/// Int8 rows · 8-bit activations.
#[inline]
pub fn gemv_int8_q8(isa: Isa, w: &[u8], x: &ActQ8, y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2_q8::gemv_int8_q8_avx2(w, x, y) },
        _ => gemv_int8_q8_ref(w, x, y),
    }
}

/// Scalar reference: int4 rows (groups of `group`) against the dequantized activations.
pub fn gemv_int4_q8_ref(group: usize, w: &[u8], x: &ActQ8, y: &mut [f32]) {
    let cols = x.len();
    let rb = int::check_int4_rows("gemv_int4_q8_ref", group, cols, w.len(), y.len());
    gemv_q8_ref_with(
        y.len(),
        |r, o| int::dequant_int4_ref(group, cols, &w[r * rb..(r + 1) * rb], o),
        x,
        y,
    )
}

/// Int4 rows (groups of `group`) · 8-bit activations.
#[inline]
pub fn gemv_int4_q8(isa: Isa, group: usize, w: &[u8], x: &ActQ8, y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::avx2_q8::gemv_int4_q8_avx2(group, w, x, y)
        },
        _ => gemv_int4_q8_ref(group, w, x, y),
    }
}

/// Scalar reference of [`gemm_int4_lanes_q8`]: int4 g32 rows in the lane layout
/// ([`int::int4_to_lanes`]) widened exactly, against each token's dequantized activations.
pub fn gemm_int4_lanes_q8_ref(w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    gemm_q8_ref_with(xs, y, |x, y| {
        let cols = x.len();
        let rb = int::check_int4_rows("gemm_int4_lanes_q8_ref", QK8, cols, w.len(), y.len());
        let row =
            |r: usize, o: &mut [f32]| int::dequant_int4_lanes_ref(cols, &w[r * rb..][..rb], o);
        gemv_q8_ref_with(y.len(), row, x, y)
    })
}

/// Int4 g32 rows in the lane layout ([`int::int4_to_lanes`]) · several tokens' 8-bit
/// activations, their lanes filled ([`ActQ8::fill_lanes`]): `y[i * rows + r] = dot(row r,
/// xs[i])`, `y` being `[xs.len(), rows]` (decode passes one token).
#[inline]
pub fn gemm_int4_lanes_q8(isa: Isa, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    let (rows, Some(x0)) = gemm_rows("gemm_int4_lanes_q8", xs, y.len()) else {
        return;
    };
    int::check_int4_rows("gemm_int4_lanes_q8", QK8, x0.len(), w.len(), rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2; the shapes are checked above.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::avx2_q8::gemm_int4_lanes_q8_avx2(w, xs, y)
        },
        _ => gemm_int4_lanes_q8_ref(w, xs, y),
    }
}

/// Scalar reference of [`gemm_int4_q8`]: the reference GEMV once per token.
pub fn gemm_int4_q8_ref(group: usize, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    gemm_q8_ref_with(xs, y, |x, y| gemv_int4_q8_ref(group, w, x, y))
}

/// Int4 rows (groups of `group`) · several tokens' 8-bit activations, the batched GEMV of
/// prefill: `y[i * rows + r] = dot(row r, xs[i])`, `y` being `[xs.len(), rows]`.
#[inline]
pub fn gemm_int4_q8(isa: Isa, group: usize, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    let (rows, Some(x0)) = gemm_rows("gemm_int4_q8", xs, y.len()) else {
        return;
    };
    int::check_int4_rows("gemm_int4_q8", group, x0.len(), w.len(), rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2; the shapes are checked above.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::avx2_q8::gemm_int4_q8_avx2(group, w, xs, y)
        },
        _ => gemm_int4_q8_ref(group, w, xs, y),
    }
}

/// Scalar reference of [`gemm_split_q8`]: the reference GEMV once per token.
pub fn gemm_split_q8_ref(t: GgmlType, lanes: bool, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    gemm_q8_ref_with(xs, y, |x, y| {
        let (cols, rb) = (x.len(), t.nbytes(x.len()).expect("rows of whole blocks"));
        let row =
            |r: usize, o: &mut [f32]| rows::dequant_rows_ref(t, lanes, cols, &w[r * rb..][..rb], o);
        gemv_q8_ref_with(y.len(), row, x, y)
    })
}

/// Split Q4_0 / Q4_1 / Q5_0 / Q5_1 rows ([`rows`]) · several tokens' 8-bit activations:
/// `y[i * rows + r] = dot(row r, xs[i])`, `y` being `[xs.len(), rows]` (decode passes one
/// token). With `lanes` (Q4_0, Q4_1) the rows' `qs` are in the lane layout and the tokens'
/// lanes must be filled ([`ActQ8::fill_lanes`]).
#[inline]
pub fn gemm_split_q8(isa: Isa, t: GgmlType, lanes: bool, w: &[u8], xs: &[ActQ8], y: &mut [f32]) {
    let (rows, Some(x0)) = gemm_rows("gemm_split_q8", xs, y.len()) else {
        return;
    };
    assert!(
        rows::fields(t).is_some()
            && (!lanes || rows::lanes_ok(t))
            && w.len().is_multiple_of(t.block_bytes()),
        "gemm_split_q8: {} bytes of {} rows",
        w.len(),
        t.name()
    );
    blocks_per_row("gemm_split_q8", QK, w.len() / t.block_bytes(), x0, rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2; the shapes are checked above.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::avx2_q8::gemm_split_q8_avx2(t, lanes, w, xs, y)
        },
        _ => gemm_split_q8_ref(t, lanes, w, xs, y),
    }
}
