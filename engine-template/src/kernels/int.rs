//! Clocher's weight-only integer formats: INT8 and INT4 weights, f32 activations, f32 sums.
//!
//! Both are stored a row at a time (the row is the block), so a row's scales sit right before
//! its codes and one GEMV row streams one contiguous range of the blob.
//!
//! - **`int8`** (8 + cols bytes a row): `d: f32`, `m: f32`, `qs: [u8; cols]`; weight
//!   `j` is `d * qs[j] + m`. Min-max (asym) puts `m` at the row's minimum; sym fixes
//!   `m = -128 d`; per-tensor scales repeat the tensor's `d`, `m` in every row.
//! - **`int4_g<G>`** (4 + 2 * cols/G + cols/2 bytes a row): `d: bf16`, `dmin: bf16`,
//!   `scales: [u8; cols/G]`, `mins: [u8; cols/G]`, `qs: [u8; cols/2]`. Group `g` holds weights
//!   `g*G .. (g+1)*G`; its bytes are `qs[g*G/2 .. (g+1)*G/2]`, byte `i` has weight `g*G + i` in
//!   the low nibble and weight `g*G + G/2 + i` in the high one (ggml's in-block order). Weight
//!   = `d * scales[g] * q - dmin * mins[g]`. The group scales and mins are 8-bit codes against
//!   the row's `d` and `dmin` (as K-quants do with 6 bits in a 256-superblock), so group 32
//!   costs 4.5 bits a weight plus 32 bits a row. `d` and `dmin` are bf16, rounded up so the
//!   largest group still has code 255: f16 would go subnormal (and lose its precision) for the
//!   small weights of real checkpoints, and the 8-bit codes absorb bf16's short mantissa. Sym stores `dmin = 8 d`, `mins = scales`
//!   (weight = `d * scales[g] * (q - 8)`), so both schemes share one layout and one kernel.
//! - **`int4_g32_lanes`**: `int4_g32` with each whole run of eight groups' `qs` in the lane
//!   layout ([`int4_to_lanes`], ADR 43-44), what int4w packs now.
//!
//! Every op has a plain `*_ref` (dequantize the row, then dot: the oracle and the fallback)
//! and fused AVX2 kernels with the same signature (AVX-512 ones for the plain layouts).

use super::{reference, Isa};
use half::bf16;
use serde::{Deserialize, Serialize};

/// Bytes before the codes of an int8 row (`d`, `m`).
pub const INT8_HEADER: usize = 8;
/// Bytes of an int4 row's `d` and `dmin`.
pub const INT4_HEADER: usize = 4;
/// Int4 group sizes must be a multiple of this (the SIMD kernels take 16 bytes of a group's
/// low and high halves at a time).
pub const INT4_GROUP_MULTIPLE: usize = 32;

/// An int8 row of `K` weights, as the generated crates view the blob. Every field is bytes, so
/// the struct has alignment 1 and no padding for any `K`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowI8<const K: usize> {
    pub d: [u8; 4],
    pub m: [u8; 4],
    pub qs: [u8; K],
}
// SAFETY: only byte arrays (alignment 1, no padding); every bit pattern is valid.
unsafe impl<const K: usize> bytemuck::Zeroable for RowI8<K> {}
// SAFETY: as above.
unsafe impl<const K: usize> bytemuck::Pod for RowI8<K> {}
const _: () = assert!(std::mem::size_of::<RowI8<576>>() == INT8_HEADER + 576);

/// An int4 row of `2 * H` weights in `NG` groups. Byte fields only, like [`RowI8`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowI4<const NG: usize, const H: usize> {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; NG],
    pub mins: [u8; NG],
    pub qs: [u8; H],
}
// SAFETY: only byte arrays (alignment 1, no padding); every bit pattern is valid.
unsafe impl<const NG: usize, const H: usize> bytemuck::Zeroable for RowI4<NG, H> {}
// SAFETY: as above.
unsafe impl<const NG: usize, const H: usize> bytemuck::Pod for RowI4<NG, H> {}
const _: () = assert!(std::mem::size_of::<RowI4<18, 288>>() == INT4_HEADER + 2 * 18 + 288);

/// Bytes of one int8 row.
pub const fn int8_row_bytes(cols: usize) -> usize {
    INT8_HEADER + cols
}

/// Bytes of one int4 row with groups of `group`.
pub const fn int4_row_bytes(cols: usize, group: usize) -> usize {
    int4_qs_offset(cols / group) + cols / 2
}

/// Why `group` can't split rows of `cols`, if it can't.
pub fn int4_group_error(cols: usize, group: usize) -> Option<String> {
    if group == 0 || !group.is_multiple_of(INT4_GROUP_MULTIPLE) {
        Some(format!(
            "int4 group size {group} is not a positive multiple of {INT4_GROUP_MULTIPLE}"
        ))
    } else if !cols.is_multiple_of(group) {
        Some(format!(
            "int4 group size {group} does not divide the row of {cols}"
        ))
    } else {
        None
    }
}

/// Symmetric (zero maps to a code) or asymmetric (min-max) quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Sym,
    Asym,
}

/// How the range a scale covers is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Clip {
    /// Min and max.
    None,
    /// Clamp each row (int4, per-row int8) or tensor (per-tensor int8) to its `P`th and
    /// `100 - P`th percentiles first.
    Percentile(f32),
    /// Shrink each group's (int4) or row's (int8) range by the factor in [`MSE_SHRINK`] that
    /// gives the least squared error.
    Mse,
}

/// Range factors the `mse` clip tries.
pub const MSE_SHRINK: [f32; 11] = [
    1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.875, 0.85, 0.8, 0.75, 0.7,
];

impl std::str::FromStr for Clip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Clip::None),
            "mse" => Ok(Clip::Mse),
            _ => {
                let p = s
                    .strip_prefix("percentile:")
                    .and_then(|p| p.parse::<f32>().ok())
                    .ok_or_else(|| {
                        format!("clip {s:?} is not none, mse or percentile:P (50 < P <= 100)")
                    })?;
                if p > 50.0 && p <= 100.0 {
                    Ok(Clip::Percentile(p))
                } else {
                    Err(format!("clip percentile {p} is outside (50, 100]"))
                }
            }
        }
    }
}
impl TryFrom<String> for Clip {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<Clip> for String {
    fn from(c: Clip) -> String {
        c.to_string()
    }
}
impl std::fmt::Display for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clip::None => f.write_str("none"),
            Clip::Mse => f.write_str("mse"),
            Clip::Percentile(p) => write!(f, "percentile:{p}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization (pack time).

/// The `[lo, hi]` that `clip` keeps of `v` (the plain min and max, or percentiles).
fn clip_range(v: &[f32], clip: Clip) -> (f32, f32) {
    if let Clip::Percentile(p) = clip {
        if p < 100.0 && v.len() > 2 {
            let mut s = v.to_vec();
            let n = s.len();
            let k = (((1.0 - p as f64 / 100.0) * (n - 1) as f64).round() as usize).min(n - 1);
            let lo = *s.select_nth_unstable_by(k, f32::total_cmp).1;
            let hi = *s.select_nth_unstable_by(n - 1 - k, f32::total_cmp).1;
            return (lo, hi);
        }
    }
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `(d, m)` of an int8 row or tensor covering `[lo, hi]`.
fn int8_params(lo: f32, hi: f32, scheme: Scheme) -> (f32, f32) {
    match scheme {
        Scheme::Asym => ((hi - lo) / 255.0, lo),
        Scheme::Sym => {
            let d = lo.abs().max(hi.abs()) / 127.0;
            (d, -128.0 * d)
        }
    }
}

fn int8_code(w: f32, d: f32, m: f32) -> u8 {
    if d == 0.0 {
        return 0;
    }
    ((w - m) / d).round().clamp(0.0, 255.0) as u8
}

/// Squared error of `v` quantized with `(d, m)` to codes `0..=qmax`.
fn sq_err(v: &[f32], d: f32, m: f32, qmax: f32) -> f64 {
    v.iter()
        .map(|&w| {
            let q = if d == 0.0 {
                0.0
            } else {
                ((w - m) / d).round().clamp(0.0, qmax)
            };
            let e = (d * q + m - w) as f64;
            e * e
        })
        .sum()
}

/// The `(d, m)` that covers `v`'s clipped range, mapped to `0..=qmax` codes by `params`, and
/// with `Clip::Mse` the shrunk range with the least squared error.
fn best_params(
    v: &[f32],
    lo: f32,
    hi: f32,
    clip: Clip,
    qmax: f32,
    params: impl Fn(f32, f32) -> (f32, f32),
) -> (f32, f32) {
    if clip != Clip::Mse {
        return params(lo, hi);
    }
    MSE_SHRINK
        .iter()
        .map(|&a| params(lo * a, hi * a))
        .map(|(d, m)| (sq_err(v, d, m, qmax), d, m))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, d, m)| (d, m))
        .expect("MSE_SHRINK is not empty")
}

fn check_finite(w: &[f32]) -> Result<(), String> {
    match w.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("weight {i} is {} (not finite)", w[i])),
        None => Ok(()),
    }
}

/// Quantizes a row-major `[rows, cols]` matrix to int8 rows (per-row scales, or one
/// per-tensor scale repeated in every row).
pub fn quantize_int8(
    w: &[f32],
    cols: usize,
    per_tensor: bool,
    scheme: Scheme,
    clip: Clip,
) -> Result<Vec<u8>, String> {
    assert!(
        cols > 0 && w.len().is_multiple_of(cols),
        "quantize_int8: shape"
    );
    check_finite(w)?;
    let tensor = per_tensor.then(|| {
        let (lo, hi) = clip_range(w, clip);
        best_params(w, lo, hi, clip, 255.0, |l, h| int8_params(l, h, scheme))
    });
    let mut out = Vec::with_capacity(w.len() / cols * int8_row_bytes(cols));
    for row in w.chunks_exact(cols) {
        let (d, m) = tensor.unwrap_or_else(|| {
            let (lo, hi) = clip_range(row, clip);
            best_params(row, lo, hi, clip, 255.0, |l, h| int8_params(l, h, scheme))
        });
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        out.extend(row.iter().map(|&v| int8_code(v, d, m)));
    }
    Ok(out)
}

/// One group's float `(step, offset)` before the 8-bit coding: weight = step * q + offset.
/// Asym keeps 0 inside the range (offset <= 0), as the stored `mins` are unsigned.
fn int4_group_params(lo: f32, hi: f32, scheme: Scheme) -> (f32, f32) {
    match scheme {
        Scheme::Asym => {
            let lo = lo.min(0.0);
            ((hi.max(lo) - lo) / 15.0, lo)
        }
        Scheme::Sym => {
            let d = lo.abs().max(hi.abs()) / 7.0;
            (d, -8.0 * d)
        }
    }
}

/// An 8-bit code of `v` against `scale` (`v >= 0`); at least 1 when `v > 0`, so a group with
/// any spread keeps a non-zero step.
fn code8(v: f32, scale: f32) -> u8 {
    if scale == 0.0 || v <= 0.0 {
        return 0;
    }
    (v / scale).round().clamp(1.0, 255.0) as u8
}

/// The smallest bf16 at least `v` (`v >= 0`), so codes against it never exceed 255.
fn bf16_at_least(v: f32) -> bf16 {
    let b = bf16::from_f32(v);
    if b.to_f32() < v {
        bf16::from_bits(b.to_bits() + 1)
    } else {
        b
    }
}

/// Quantizes a row-major `[rows, cols]` matrix to int4 rows with groups of `group` (see the
/// module docs for the layout).
pub fn quantize_int4(
    w: &[f32],
    cols: usize,
    group: usize,
    scheme: Scheme,
    clip: Clip,
) -> Result<Vec<u8>, String> {
    assert!(
        cols > 0 && w.len().is_multiple_of(cols),
        "quantize_int4: shape"
    );
    if let Some(e) = int4_group_error(cols, group) {
        return Err(e);
    }
    check_finite(w)?;
    let ng = cols / group;
    let mut out = Vec::with_capacity(w.len() / cols * int4_row_bytes(cols, group));
    let mut steps = vec![(0.0f32, 0.0f32); ng];
    let mut clipped = vec![0.0f32; cols];
    for row in w.chunks_exact(cols) {
        let (rlo, rhi) = clip_range(row, clip);
        for (c, &v) in clipped.iter_mut().zip(row) {
            *c = v.clamp(rlo, rhi);
        }
        for (s, g) in steps.iter_mut().zip(clipped.chunks_exact(group)) {
            let (lo, hi) = clip_range(g, Clip::None);
            *s = best_params(g, lo, hi, clip, 15.0, |l, h| {
                int4_group_params(l, h, scheme)
            });
        }
        // Row scales: the largest group step (and offset) maps to code 255.
        let max_step = steps.iter().fold(0.0f32, |a, s| a.max(s.0));
        let max_min = steps.iter().fold(0.0f32, |a, s| a.max(-s.1));
        let d = bf16_at_least(max_step / 255.0);
        let (dmin, scales, mins): (bf16, Vec<u8>, Vec<u8>);
        let df = d.to_f32();
        scales = steps.iter().map(|s| code8(s.0, df)).collect();
        match scheme {
            Scheme::Sym => {
                dmin = bf16::from_f32(8.0 * df);
                mins = scales.clone();
            }
            Scheme::Asym => {
                dmin = bf16_at_least(max_min / 255.0);
                mins = steps.iter().map(|s| code8(-s.1, dmin.to_f32())).collect();
            }
        }
        if !df.is_finite() || !dmin.to_f32().is_finite() {
            return Err(format!(
                "a row's int4 scale {max_step} is beyond the bf16 range"
            ));
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&scales);
        out.extend_from_slice(&mins);
        let dm = dmin.to_f32();
        for (gi, g) in clipped.chunks_exact(group).enumerate() {
            let step = df * scales[gi] as f32;
            let off = -dm * mins[gi] as f32;
            let code = |v: f32| -> u8 {
                if step == 0.0 {
                    // Sym keeps zero at code 8; asym's only value is `off`, at code 0.
                    return if scheme == Scheme::Sym { 8 } else { 0 };
                }
                ((v - off) / step).round().clamp(0.0, 15.0) as u8
            };
            let (a, b) = g.split_at(group / 2);
            out.extend(a.iter().zip(b).map(|(&lo, &hi)| code(lo) | (code(hi) << 4)));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Dequantization and GEMV.

fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Widens int8 rows of `cols` weights to f32 (`out.len()` is a whole number of rows).
pub fn dequant_int8_ref(cols: usize, w: &[u8], out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    let rb = int8_row_bytes(cols);
    assert_eq!(w.len() / rb * cols, out.len(), "dequant_int8: shape");
    for (o, row) in out.chunks_exact_mut(cols).zip(w.chunks_exact(rb)) {
        let (d, m) = row_scales_f32(row);
        for (o, &q) in o.iter_mut().zip(&row[INT8_HEADER..]) {
            *o = d * q as f32 + m;
        }
    }
}

/// Groups in one run of the lane layout of int4 g32 nibbles ([`int4_to_lanes`]).
pub const LANE_RUN: usize = 8;
/// The group size of the lane layout: a group's four bytes per 32-byte vector.
pub const LANE_GROUP: usize = 32;

/// Reorders the nibbles of int4 g32 rows (`cols` weights each) into the lane layout: in each
/// whole run of [`LANE_RUN`] groups (128 bytes), byte `32 L + 4 j + i` holds group `j`'s
/// weights `8 L + i` (low nibble) and `8 L + 4 + i` (high nibble), so 32-bit lane `j` of each
/// 32-byte load belongs to group `j` alone and a row's eight groups are summed in the lanes of
/// one vector (no per-pair shuffle of scales; ADR 43). Groups past the last whole run keep the
/// plain order (byte `b` of a group: weights `b` and `b + 16`).
pub fn int4_to_lanes(w: &mut [u8], cols: usize) {
    int4_lanes_map(w, cols, qs_to_lanes)
}

/// The inverse of [`int4_to_lanes`].
pub fn int4_from_lanes(w: &mut [u8], cols: usize) {
    int4_lanes_map(w, cols, qs_from_lanes)
}

/// Bytes of one run of the lane layout: [`LANE_RUN`] groups of 16 bytes.
pub const LANE_RUN_BYTES: usize = 16 * LANE_RUN;

/// A row's nibbles (groups of 32 weights in 16 bytes each, ggml's order within a group) into
/// the lane layout ([`int4_to_lanes`]), each whole run of [`LANE_RUN`] groups; the groups
/// after the last whole run stay as they are. Split Q4_0 / Q4_1 rows' `qs` take it too.
pub fn qs_to_lanes(qs: &mut [u8]) {
    for run in qs.chunks_exact_mut(LANE_RUN_BYTES) {
        let nat: [u8; LANE_RUN_BYTES] = (&*run).try_into().expect("a whole run");
        for (k, b) in run.iter_mut().enumerate() {
            let (l, j, i) = (k / 32, k / 4 % 8, k % 4);
            let group = &nat[16 * j..16 * j + 16];
            *b = plain_nibble(group, 8 * l + i) | plain_nibble(group, 8 * l + 4 + i) << 4;
        }
    }
}

/// The inverse of [`qs_to_lanes`]. Joining split Q4 rows runs it on every row the f32 GEMV
/// reads, so it works a 32-bit lane word at a time: a byte a nibble cost that path 70% of its
/// speed.
pub fn qs_from_lanes(qs: &mut [u8]) {
    const LOW: u32 = 0x0f0f_0f0f;
    for run in qs.chunks_exact_mut(LANE_RUN_BYTES) {
        let lanes: [u8; LANE_RUN_BYTES] = (&*run).try_into().expect("a whole run");
        let word = |l: usize, j: usize| {
            u32::from_le_bytes(std::array::from_fn(|i| lanes[32 * l + 4 * j + i]))
        };
        for (j, group) in run.chunks_exact_mut(16).enumerate() {
            // Plain byte `b` holds weights `b` and `b + 16`; lane word `L` holds weights
            // `8 L..8 L + 4` in its low nibbles and `8 L + 4..8 L + 8` in its high ones. So
            // bytes 0..8 pair words 0 and 2, bytes 8..16 words 1 and 3.
            for (h, (a, c)) in [(word(0, j), word(2, j)), (word(1, j), word(3, j))]
                .into_iter()
                .enumerate()
            {
                let lo = (a & LOW) | (c & LOW) << 4;
                let hi = (a >> 4 & LOW) | (c >> 4 & LOW) << 4;
                group[8 * h..8 * h + 4].copy_from_slice(&lo.to_le_bytes());
                group[8 * h + 4..8 * h + 8].copy_from_slice(&hi.to_le_bytes());
            }
        }
    }
}

/// Weight `e` (0..32) of one group's 16 plain-order bytes (byte `e % 16`, low nibble below 16).
fn plain_nibble(group: &[u8], e: usize) -> u8 {
    let b = group[e % 16];
    if e < 16 {
        b & 0x0f
    } else {
        b >> 4
    }
}

/// Rewrites the nibbles of each g32 row of `cols` with `f`.
fn int4_lanes_map(w: &mut [u8], cols: usize, f: fn(&mut [u8])) {
    if cols == 0 {
        return;
    }
    if let Some(e) = int4_group_error(cols, LANE_GROUP) {
        panic!("int4 lanes: {e}");
    }
    let (rb, ng) = (int4_row_bytes(cols, LANE_GROUP), cols / LANE_GROUP);
    assert!(
        w.len().is_multiple_of(rb),
        "int4 lanes: {} bytes are not whole g32 rows of {cols}",
        w.len()
    );
    for row in w.chunks_exact_mut(rb) {
        f(&mut row[int4_qs_offset(ng)..]);
    }
}

/// Widens int4 rows of `cols` weights in groups of `group` to f32.
pub fn dequant_int4_ref(group: usize, cols: usize, w: &[u8], out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    if let Some(e) = int4_group_error(cols, group) {
        panic!("dequant_int4: {e}");
    }
    let rb = int4_row_bytes(cols, group);
    let ng = cols / group;
    assert_eq!(w.len() / rb * cols, out.len(), "dequant_int4: shape");
    for (o, row) in out.chunks_exact_mut(cols).zip(w.chunks_exact(rb)) {
        let (d, dmin, scales, mins, qs) = int4_row(row, ng);
        for (g, o) in o.chunks_exact_mut(group).enumerate() {
            let (step, off) = (d * scales[g] as f32, dmin * mins[g] as f32);
            let q = &qs[g * group / 2..(g + 1) * group / 2];
            let (lo, hi) = o.split_at_mut(group / 2);
            for ((lo, hi), &b) in lo.iter_mut().zip(hi).zip(q) {
                *lo = step * (b & 0x0f) as f32 - off;
                *hi = step * (b >> 4) as f32 - off;
            }
        }
    }
}

/// Widens int4 g32 rows of `cols` weights in the lane layout ([`int4_to_lanes`]) to f32: each
/// row put back in plain order, then [`dequant_int4_ref`].
pub fn dequant_int4_lanes_ref(cols: usize, w: &[u8], out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    let rb = int4_row_bytes(cols, LANE_GROUP);
    assert_eq!(w.len() / rb * cols, out.len(), "dequant_int4_lanes: shape");
    let mut plain = vec![0u8; rb];
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        plain.copy_from_slice(row);
        int4_from_lanes(&mut plain, cols);
        dequant_int4_ref(LANE_GROUP, cols, &plain, o);
    }
}

/// The reference GEMV over rows of `x.len()` weights: widen a row, then a plain dot.
fn gemv_rows_ref(
    rb: usize,
    dequant: impl Fn(&[u8], &mut [f32]),
    w: &[u8],
    x: &[f32],
    y: &mut [f32],
) {
    assert_eq!(
        w.len(),
        rb * y.len(),
        "gemv: {} bytes for {} rows",
        w.len(),
        y.len()
    );
    let mut tmp = vec![0.0f32; x.len()];
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(rb)) {
        dequant(row, &mut tmp);
        *yr = reference::dot_f32_ref(&tmp, x);
    }
}

/// Scalar reference: `y[r] = dot(int8 row r, x)`.
pub fn gemv_int8_ref(w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    gemv_rows_ref(
        int8_row_bytes(cols),
        |r, o| dequant_int8_ref(cols, r, o),
        w,
        x,
        y,
    )
}

/// Scalar reference: `y[r] = dot(int4 row r, x)` with groups of `group`.
pub fn gemv_int4_ref(group: usize, w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    if let Some(e) = int4_group_error(cols, group) {
        panic!("gemv_int4: {e}");
    }
    gemv_rows_ref(
        int4_row_bytes(cols, group),
        |r, o| dequant_int4_ref(group, cols, r, o),
        w,
        x,
        y,
    )
}

/// Scalar reference: `y[r] = dot(int4 g32 row r in the lane layout, x)`.
pub fn gemv_int4_lanes_ref(w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    if let Some(e) = int4_group_error(cols, LANE_GROUP) {
        panic!("gemv_int4_lanes: {e}");
    }
    gemv_rows_ref(
        int4_row_bytes(cols, LANE_GROUP),
        |r, o| dequant_int4_lanes_ref(cols, r, o),
        w,
        x,
        y,
    )
}

/// Int8 rows widened to f32 on `isa` (AVX2 where available).
#[inline]
pub fn dequant_int8(isa: Isa, cols: usize, w: &[u8], out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2::dequant_int8_avx2(cols, w, out) },
        _ => dequant_int8_ref(cols, w, out),
    }
}

/// Int4 rows widened to f32 on `isa` (AVX2 where available).
#[inline]
pub fn dequant_int4(isa: Isa, group: usize, cols: usize, w: &[u8], out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    // The SIMD body takes 16 bytes of a group at a time: check the group before it runs.
    if let Some(e) = int4_group_error(cols, group) {
        panic!("dequant_int4: {e}");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::avx2::dequant_int4_avx2(group, cols, w, out)
        },
        _ => dequant_int4_ref(group, cols, w, out),
    }
}

/// Int4 g32 rows in the lane layout ([`int4_to_lanes`]) widened to f32 on `isa`.
#[inline]
pub fn dequant_int4_lanes(isa: Isa, cols: usize, w: &[u8], out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    if let Some(e) = int4_group_error(cols, LANE_GROUP) {
        panic!("dequant_int4_lanes: {e}");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2; the group is checked above.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::avx2::dequant_int4_lanes_avx2(cols, w, out)
        },
        _ => dequant_int4_lanes_ref(cols, w, out),
    }
}

/// INT8 GEMV on `isa`, f32 activations.
#[inline]
pub fn gemv_int8(isa: Isa, w: &[u8], x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after runtime feature detection.
        Isa::Avx512 => unsafe { super::x86::avx512::gemv_int8_avx512(w, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced after runtime feature detection.
        Isa::Avx2 => unsafe { super::x86::avx2::gemv_int8_avx2(w, x, y) },
        _ => gemv_int8_ref(w, x, y),
    }
}

/// INT4 GEMV on `isa`, f32 activations.
#[inline]
pub fn gemv_int4(isa: Isa, group: usize, w: &[u8], x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced after runtime feature detection.
        Isa::Avx512 => unsafe { super::x86::avx512::gemv_int4_avx512(group, w, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced after runtime feature detection.
        Isa::Avx2 => unsafe { super::x86::avx2::gemv_int4_avx2(group, w, x, y) },
        _ => gemv_int4_ref(group, w, x, y),
    }
}

/// Int4 g32 rows in the lane layout ([`int4_to_lanes`]) · f32 activations on `isa` (the AVX2
/// body on AVX-512 machines too).
#[inline]
pub fn gemv_int4_lanes(isa: Isa, w: &[u8], x: &[f32], y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe { super::x86::avx2::gemv_int4_lanes_avx2(w, x, y) },
        _ => gemv_int4_lanes_ref(w, x, y),
    }
}

/// Checks a fused kernel's arguments; returns the row's byte length.
pub(crate) fn check_int4(name: &str, group: usize, w: &[u8], x: &[f32], y: &[f32]) -> usize {
    check_int4_rows(name, group, x.len(), w.len(), y.len())
}

/// Checks that `w_len` bytes are `rows` int4 rows of `cols` weights in groups of `group`;
/// returns the row's byte length.
pub(crate) fn check_int4_rows(
    name: &str,
    group: usize,
    cols: usize,
    w_len: usize,
    rows: usize,
) -> usize {
    if let Some(e) = int4_group_error(cols, group) {
        panic!("{name}: {e}");
    }
    let rb = int4_row_bytes(cols, group);
    assert_eq!(w_len, rb * rows, "{name}: {w_len} bytes for {rows} rows");
    rb
}

/// Checks a fused kernel's arguments; returns the row's byte length.
pub(crate) fn check_int8(name: &str, w: &[u8], x: &[f32], y: &[f32]) -> usize {
    check_int8_rows(name, x.len(), w.len(), y.len())
}

/// Checks that `w_len` bytes are `rows` int8 rows of `cols` weights; returns the row's bytes.
pub(crate) fn check_int8_rows(name: &str, cols: usize, w_len: usize, rows: usize) -> usize {
    let rb = int8_row_bytes(cols);
    assert_eq!(w_len, rb * rows, "{name}: {w_len} bytes for {rows} rows");
    rb
}

/// `(d, m)` of an int8 row.
#[inline(always)]
pub(crate) fn row_scales_f32(row: &[u8]) -> (f32, f32) {
    (f32_at(row, 0), f32_at(row, 4))
}

/// An int4 row's parts: `d`, `dmin` (bf16 widened: the upper half of an f32), then the `ng`
/// group scales, the `ng` group mins and the nibbles.
#[inline(always)]
pub(crate) fn int4_row(row: &[u8], ng: usize) -> (f32, f32, &[u8], &[u8], &[u8]) {
    let h = |i: usize| f32::from_bits((u16::from_le_bytes([row[i], row[i + 1]]) as u32) << 16);
    let (scales, rest) = row[INT4_HEADER..int4_qs_offset(ng)].split_at(ng);
    (h(0), h(2), scales, rest, &row[int4_qs_offset(ng)..])
}

/// Where an int4 row of `ng` groups keeps its nibbles: after the header, scales and mins.
#[inline(always)]
pub const fn int4_qs_offset(ng: usize) -> usize {
    INT4_HEADER + 2 * ng
}

/// `sum_g mins[g] * xs[g]` in four independent partial sums (no serial dependency per group).
#[inline(always)]
pub(crate) fn mins_dot(mins: &[u8], xs: &[f32]) -> f32 {
    let mut p = [0.0f32; 4];
    let (mc, xc) = (mins.chunks_exact(4), xs.chunks_exact(4));
    let (mr, xr) = (mc.remainder(), xc.remainder());
    for (m, x) in mc.zip(xc) {
        for k in 0..4 {
            p[k] += m[k] as f32 * x[k];
        }
    }
    let tail: f32 = mr.iter().zip(xr).map(|(m, x)| *m as f32 * x).sum();
    (p[0] + p[1]) + (p[2] + p[3]) + tail
}

/// Sums of `x` over each group of `group` (the `dmin * mins` term of int4 rows needs them once
/// per GEMV, not once per row).
pub(crate) fn group_sums(x: &[f32], group: usize) -> Vec<f32> {
    x.chunks_exact(group).map(|g| g.iter().sum()).collect()
}
