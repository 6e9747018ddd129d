//! GGUF's 32-weight 4- and 5-bit blocks (Q4_0, Q4_1, Q5_0, Q5_1) stored split by field within
//! each row (ADR 26): a row of `nb` Q5_0 blocks is their `nb` scales `d`, then their `nb`
//! fifth-bit words `qh`, then their `nb` nibble arrays `qs`; the `_1` formats add their `nb`
//! minimums `m` after the scales, and the 4-bit ones have no `qh`. Each run of eight blocks'
//! `qh` words is stored as one 32-byte plane in their place (ADR 27, [`PLANE_BLOCKS`]). Values
//! are ggml's, only the order of their bits changes, so the packer splits a GGUF tensor
//! without requantizing.
//!
//! Why: in ggml's order a block interleaves its header with its codes, and a kernel widens
//! each header on its own (an f16 convert per field, a multiply and a broadcast per block).
//! Split, eight scales are one 16-byte load and one `vcvtph2ps`, and two blocks' nibbles are
//! one 32-byte load, as in int4 g32 rows, so the batched 8-bit tile (`x86::avx2_q8`) runs them,
//! for decode and prefill alike.
//!
//! New packs (`q4_0_rows_lanes`, `q4_1_rows_lanes`, ADR 45) also put each whole run of eight
//! Q4 blocks' `qs` in int4 g32's lane layout ([`int::qs_to_lanes`]), in the same row structs:
//! `qs[k]` is then block `k`'s bytes only once [`join_row`] has undone it.

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, GgmlType as Gt, QK};
use super::{int, quant, Isa};

/// A Q4_0 row of `NB` blocks split by field: 4.5 bits per weight; block `k` is `d[k]` (f16)
/// and `qs[k]` of ggml's `block_q4_0`, elements in its order. Byte fields only (alignment 1, no
/// padding), like [`super::int::RowI4`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowQ4_0<const NB: usize> {
    pub d: [[u8; 2]; NB],
    pub qs: [[u8; QK / 2]; NB],
}
// SAFETY: only byte arrays (alignment 1, no padding); every bit pattern is valid.
unsafe impl<const NB: usize> bytemuck::Zeroable for RowQ4_0<NB> {}
// SAFETY: as above.
unsafe impl<const NB: usize> bytemuck::Pod for RowQ4_0<NB> {}
const _: () = assert!(std::mem::size_of::<RowQ4_0<18>>() == 18 * std::mem::size_of::<BlockQ4_0>());

/// A Q4_1 row of `NB` blocks split by field: 5 bits per weight; block `k` is `d[k]`, `m[k]`
/// (f16) and `qs[k]` of ggml's `block_q4_1`, elements in its order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowQ4_1<const NB: usize> {
    pub d: [[u8; 2]; NB],
    pub m: [[u8; 2]; NB],
    pub qs: [[u8; QK / 2]; NB],
}
// SAFETY: only byte arrays (alignment 1, no padding); every bit pattern is valid.
unsafe impl<const NB: usize> bytemuck::Zeroable for RowQ4_1<NB> {}
// SAFETY: as above.
unsafe impl<const NB: usize> bytemuck::Pod for RowQ4_1<NB> {}
const _: () = assert!(std::mem::size_of::<RowQ4_1<18>>() == 18 * std::mem::size_of::<BlockQ4_1>());

/// A Q5_0 row of `NB` blocks split by field: 5.5 bits per weight; block `k` is `d[k]` (f16),
/// `qh[k]` and `qs[k]` of ggml's `block_q5_0`, elements in its order, `qh` of each run of
/// eight blocks as a plane ([`PLANE_BLOCKS`]). Byte fields only
/// (alignment 1, no padding), like [`super::int::RowI4`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowQ5_0<const NB: usize> {
    pub d: [[u8; 2]; NB],
    pub qh: [[u8; 4]; NB],
    pub qs: [[u8; QK / 2]; NB],
}
// SAFETY: only byte arrays (alignment 1, no padding); every bit pattern is valid.
unsafe impl<const NB: usize> bytemuck::Zeroable for RowQ5_0<NB> {}
// SAFETY: as above.
unsafe impl<const NB: usize> bytemuck::Pod for RowQ5_0<NB> {}
const _: () = assert!(std::mem::size_of::<RowQ5_0<18>>() == 18 * std::mem::size_of::<BlockQ5_0>());

/// A Q5_1 row of `NB` blocks split by field: 6 bits per weight; block `k` is `d[k]`, `m[k]`
/// (f16), `qh[k]` and `qs[k]` of ggml's `block_q5_1`, elements in its order, `qh` as in
/// [`RowQ5_0`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowQ5_1<const NB: usize> {
    pub d: [[u8; 2]; NB],
    pub m: [[u8; 2]; NB],
    pub qh: [[u8; 4]; NB],
    pub qs: [[u8; QK / 2]; NB],
}
// SAFETY: only byte arrays (alignment 1, no padding); every bit pattern is valid.
unsafe impl<const NB: usize> bytemuck::Zeroable for RowQ5_1<NB> {}
// SAFETY: as above.
unsafe impl<const NB: usize> bytemuck::Pod for RowQ5_1<NB> {}
const _: () = assert!(std::mem::size_of::<RowQ5_1<18>>() == 18 * std::mem::size_of::<BlockQ5_1>());

/// One field of a block: its name in ggml, its type as `model.ie.json`'s layout note gives
/// it, and its size.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: &'static str,
    pub bytes: usize,
}

const D: Field = Field {
    name: "d",
    ty: "f16 LE",
    bytes: 2,
};
const M: Field = Field {
    name: "m",
    ty: "f16 LE",
    bytes: 2,
};
const QH: Field = Field {
    name: "qh",
    ty:
        "u32 LE; each run of 8 blocks 8i..8i+8 as a 32-byte plane instead, bit v of byte b holding \
         the fifth bit of element b % 16 + 16 (v % 2) of block 8i + 2 (v / 2) + b / 16",
    bytes: 4,
};
const QS: Field = Field {
    name: "qs",
    ty: "16 bytes",
    bytes: QK / 2,
};

/// A block's fields in their order, for the formats stored split (the one description of the
/// layout: splitting, joining, the kernels' offsets and the layout note all read it).
pub fn fields(t: Gt) -> Option<&'static [Field]> {
    match t {
        Gt::Q4_0 => Some(&[D, QS]),
        Gt::Q4_1 => Some(&[D, M, QS]),
        Gt::Q5_0 => Some(&[D, QH, QS]),
        Gt::Q5_1 => Some(&[D, M, QH, QS]),
        _ => None,
    }
}

/// Where field `name` lies in a split row of `nb` blocks of `t` (empty if `t` has none).
pub fn field_range(t: Gt, nb: usize, name: &str) -> std::ops::Range<usize> {
    let mut at = 0;
    for f in fields(t).expect("only split formats have fields") {
        if f.name == name {
            return at..at + nb * f.bytes;
        }
        at += nb * f.bytes;
    }
    at..at
}

/// Calls `f(offset in the GGUF blocks, offset in the split row, length)` for every field of
/// every block of a row of `nb` blocks of `t` (which must be split: see [`fields`]).
#[inline(always)]
fn each_field(t: Gt, nb: usize, mut f: impl FnMut(usize, usize, usize)) {
    let fields = fields(t).expect("only split formats have fields");
    let (mut at_block, mut at_row) = (0, 0);
    for len in fields.iter().map(|f| f.bytes) {
        for k in 0..nb {
            f(k * t.block_bytes() + at_block, at_row + k * len, len);
        }
        at_block += len;
        at_row += nb * len;
    }
}

/// `dst.copy_from_slice(src)` for a field: the lengths of [`fields`] as fixed-size moves, not
/// a `memcpy` call each (joining rows for the f32 GEMV spent its time in those calls).
#[inline(always)]
fn copy_field(dst: &mut [u8], src: &[u8]) {
    fn fixed<const N: usize>(dst: &mut [u8], src: &[u8]) {
        let s: [u8; N] = src.try_into().expect("field lengths agree");
        dst.copy_from_slice(&s);
    }
    match src.len() {
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        16 => fixed::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Blocks whose fifth bits one plane holds ([`words_to_plane`]).
pub const PLANE_BLOCKS: usize = 8;

/// Where bit `v` of byte `b` of a fifth-bit plane comes from: (block, element). The AVX2 tile
/// takes two blocks' nibbles as two vectors, both first halves, then both second halves; bit
/// `v` of every byte is vector `v`'s fifth bits, one shift and one mask away from where they
/// go (ggml's `qh` words need a shuffle, an OR, a compare and a mask per vector).
fn plane_source(b: usize, v: usize) -> (usize, usize) {
    (2 * (v / 2) + b / 16, b % 16 + 16 * (v % 2))
}

/// Eight blocks' `qh` words (32 bytes, block order) as one plane.
fn words_to_plane(words: &[u8]) -> [u8; 32] {
    let word = |j: usize| u32::from_le_bytes([0, 1, 2, 3].map(|i| words[4 * j + i]));
    std::array::from_fn(|b| {
        (0..8).fold(0u8, |acc, v| {
            let (j, e) = plane_source(b, v);
            acc | (((word(j) >> e) & 1) as u8) << v
        })
    })
}

/// [`words_to_plane`] undone: bit `v` of 8 bytes at a time gathered into one byte by a
/// multiply (each byte's bit lands on its own place of the top byte), as the f32 path joins
/// every row on every token.
fn plane_to_words(plane: &[u8]) -> [u8; 32] {
    let mut words = [0u32; PLANE_BLOCKS];
    for half in 0..2 {
        let lanes = |at: usize| u64::from_le_bytes(std::array::from_fn(|i| plane[at + i]));
        let (a, b) = (lanes(16 * half), lanes(16 * half + 8));
        for v in 0..8 {
            let gather = |y: u64| {
                (((y >> v) & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56)
                    as u32
            };
            // Elements `b % 16` of the two 8-byte lanes, shifted to the half `v % 2` names.
            let (j, e) = plane_source(16 * half, v);
            words[j] |= (gather(a) | gather(b) << 8) << e;
        }
    }
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Whether split rows of `t` may put their `qs` in the lane layout ([`lanes_ok`]): the 4-bit
/// formats, whose 16 bytes a block are an int4 g32 group's ([`int::qs_to_lanes`], ADR 45).
pub fn lanes_ok(t: Gt) -> bool {
    matches!(t, Gt::Q4_0 | Gt::Q4_1)
}

/// Splits GGUF blocks of `t`, rows of `nb` blocks, into `out` (the same length); with `lanes`
/// (Q4_0 and Q4_1 only, [`lanes_ok`]), each row's `qs` in the lane layout.
pub fn split_rows(t: Gt, nb: usize, lanes: bool, blocks: &[u8], out: &mut [u8]) {
    assert!(
        !lanes || lanes_ok(t),
        "splitting {} rows: the format has no lane layout",
        t.name()
    );
    assert_eq!(blocks.len(), out.len(), "splitting {} rows", t.name());
    let rb = nb * t.block_bytes();
    if rb == 0 {
        return;
    }
    let qh = field_range(t, nb, "qh");
    for (src, dst) in blocks.chunks_exact(rb).zip(out.chunks_exact_mut(rb)) {
        each_field(t, nb, |b, r, len| {
            copy_field(&mut dst[r..r + len], &src[b..b + len])
        });
        for plane in dst[qh.clone()].chunks_exact_mut(32).take(nb / PLANE_BLOCKS) {
            let p = words_to_plane(plane);
            plane.copy_from_slice(&p);
        }
        if lanes {
            int::qs_to_lanes(&mut dst[field_range(t, nb, "qs")]);
        }
    }
}

/// One split row of `t` back into GGUF blocks (`out` as long as `row`); `lanes` as in
/// [`split_rows`].
pub fn join_row(t: Gt, lanes: bool, row: &[u8], out: &mut [u8]) {
    assert_eq!(row.len(), out.len(), "joining a {} row", t.name());
    let nb = row.len() / t.block_bytes();
    each_field(t, nb, |b, r, len| {
        copy_field(&mut out[b..b + len], &row[r..r + len])
    });
    if lanes {
        // Each whole run's nibbles back in plain order, into its eight blocks.
        let (qs, at) = (field_range(t, nb, "qs"), field_range(t, 1, "qs").start);
        for (i, run) in row[qs].chunks_exact(int::LANE_RUN_BYTES).enumerate() {
            let mut plain: [u8; int::LANE_RUN_BYTES] = run.try_into().expect("a whole run");
            int::qs_from_lanes(&mut plain);
            for (j, group) in plain.chunks_exact(QK / 2).enumerate() {
                let b = (int::LANE_RUN * i + j) * t.block_bytes() + at;
                copy_field(&mut out[b..b + QK / 2], group);
            }
        }
    }
    // The planes' words back into their blocks.
    let qh = field_range(t, nb, "qh");
    let at = field_range(t, 1, "qh").start;
    for (i, plane) in row[qh].chunks_exact(32).take(nb / PLANE_BLOCKS).enumerate() {
        for (j, word) in plane_to_words(plane).chunks_exact(4).enumerate() {
            let b = (PLANE_BLOCKS * i + j) * t.block_bytes() + at;
            copy_field(&mut out[b..b + 4], word);
        }
    }
}

/// Dequantizes split rows of `cols` weights (`lanes` as in [`split_rows`]), bit-exact with
/// ggml: each row joined back into blocks, then the blocks' reference dequantization.
pub fn dequant_rows_ref(t: Gt, lanes: bool, cols: usize, w: &[u8], out: &mut [f32]) {
    let rb = t.nbytes(cols).expect("rows of whole blocks");
    let mut blocks = vec![0u8; rb];
    for (row, o) in w
        .chunks_exact(rb.max(1))
        .zip(out.chunks_exact_mut(cols.max(1)))
    {
        join_row(t, lanes, row, &mut blocks);
        t.dequant(&blocks, o);
    }
}

/// Split rows · f32 activations: each row joined back into blocks and run through the block
/// format's GEMV. Decode and prefill take the 8-bit path
/// ([`super::act8::gemm_split_q8`]); this one serves `IE_ACT8=0` and the packer's checks.
pub fn gemv_rows(isa: Isa, t: Gt, lanes: bool, w: &[u8], x: &[f32], y: &mut [f32]) {
    let rb = t.nbytes(x.len()).expect("rows of whole blocks");
    assert_eq!(
        w.len(),
        rb * y.len(),
        "gemv over {} rows: shape mismatch",
        t.name()
    );
    match t {
        Gt::Q4_0 => gemv_joined(isa, (t, lanes), w, x, y, quant::gemv_q4_0),
        Gt::Q4_1 => gemv_joined(isa, (t, lanes), w, x, y, quant::gemv_q4_1),
        Gt::Q5_0 => gemv_joined(isa, (t, lanes), w, x, y, quant::gemv_q5_0),
        Gt::Q5_1 => gemv_joined(isa, (t, lanes), w, x, y, quant::gemv_q5_1),
        _ => unreachable!("{} is not stored split", t.name()),
    }
}

/// [`gemv_rows`] for blocks `B`: one row's blocks at a time, in one buffer.
fn gemv_joined<B: bytemuck::Pod>(
    isa: Isa,
    (t, lanes): (Gt, bool),
    w: &[u8],
    x: &[f32],
    y: &mut [f32],
    gemv: fn(Isa, &[B], &[f32], &mut [f32]),
) {
    let mut blocks = vec![B::zeroed(); x.len() / QK];
    let rb = std::mem::size_of_val(&blocks[..]);
    for (r, yr) in y.iter_mut().enumerate() {
        join_row(
            t,
            lanes,
            &w[r * rb..(r + 1) * rb],
            bytemuck::cast_slice_mut(&mut blocks),
        );
        gemv(isa, &blocks, x, std::slice::from_mut(yr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tol;
    use bytemuck::Zeroable;

    /// Each field lands where `RowQ5_1` (and the layout note) puts it, and joining undoes it.
    #[test]
    fn split_puts_fields_in_arrays_and_join_undoes_it() {
        let (nb, rows) = (3, 2);
        let blocks: Vec<BlockQ5_1> = (0..nb * rows)
            .map(|i| BlockQ5_1 {
                d: half::f16::from_bits(0x100 + i as u16),
                m: half::f16::from_bits(0x200 + i as u16),
                qh: [i as u8, 1, 2, 3],
                qs: [0x40 + i as u8; 16],
            })
            .collect();
        let bytes: &[u8] = bytemuck::cast_slice(&blocks);
        let mut split = vec![0u8; bytes.len()];
        split_rows(Gt::Q5_1, nb, false, bytes, &mut split);
        let split_rows: &[RowQ5_1<3>] = bytemuck::cast_slice(&split);
        for (r, row) in split_rows.iter().enumerate() {
            for k in 0..nb {
                let b = &blocks[r * nb + k];
                assert_eq!(row.d[k], b.d.to_le_bytes(), "row {r} block {k}: d");
                assert_eq!(row.m[k], b.m.to_le_bytes(), "row {r} block {k}: m");
                assert_eq!(row.qh[k], b.qh, "row {r} block {k}: qh");
                assert_eq!(row.qs[k], b.qs, "row {r} block {k}: qs");
            }
        }
        let rb = nb * Gt::Q5_1.block_bytes();
        let mut joined = vec![0u8; rb];
        for r in 0..rows {
            join_row(Gt::Q5_1, false, &split[r * rb..(r + 1) * rb], &mut joined);
            assert_eq!(joined, bytes[r * rb..(r + 1) * rb], "row {r}");
        }
    }

    /// Each fifth bit of a run of eight blocks lands on the one plane bit the layout names, and
    /// joining undoes the planes; blocks past the last run keep their words.
    #[test]
    fn fifth_bits_go_to_their_plane_bit_and_back() {
        let nb = 18;
        let at = field_range(Gt::Q5_0, nb, "qh").start;
        for (j, e) in (0..PLANE_BLOCKS).flat_map(|j| (0..32).map(move |e| (j, e))) {
            let mut blocks = vec![BlockQ5_0::zeroed(); nb];
            for run in [0, PLANE_BLOCKS] {
                blocks[run + j].qh = (1u32 << e).to_le_bytes();
            }
            blocks[17].qh = [1, 2, 3, 4];
            let bytes: &[u8] = bytemuck::cast_slice(&blocks);
            let mut split = vec![0u8; bytes.len()];
            split_rows(Gt::Q5_0, nb, false, bytes, &mut split);
            let (b, v) = (16 * (j % 2) + e % 16, 2 * (j / 2) + e / 16);
            for run in 0..2 {
                let plane = &split[at + 32 * run..at + 32 * (run + 1)];
                for (i, &byte) in plane.iter().enumerate() {
                    let want = if i == b { 1u8 << v } else { 0 };
                    assert_eq!(byte, want, "block {j} element {e}: plane {run} byte {i}");
                }
            }
            assert_eq!(
                split[at + 4 * 17..at + 4 * 18],
                [1, 2, 3, 4],
                "the last block's word"
            );
            let mut joined = vec![0u8; bytes.len()];
            join_row(Gt::Q5_0, false, &split, &mut joined);
            assert_eq!(joined, bytes, "block {j} element {e}: joined");
        }
    }

    /// Split Q4 rows with their `qs` in the lane layout: joining undoes it, and the bytes of
    /// the whole run are those of `int::qs_to_lanes` over the split `qs`.
    #[test]
    fn lanes_split_and_join_back() {
        let nb = 10;
        for t in [Gt::Q4_0, Gt::Q4_1] {
            let bytes: Vec<u8> = (0..2 * nb * t.block_bytes())
                .map(|i| (i * 53 % 251) as u8)
                .collect();
            let (mut plain, mut lanes) = (vec![0u8; bytes.len()], vec![0u8; bytes.len()]);
            split_rows(t, nb, false, &bytes, &mut plain);
            split_rows(t, nb, true, &bytes, &mut lanes);
            let rb = nb * t.block_bytes();
            for (p, l) in plain.chunks_exact(rb).zip(lanes.chunks_exact(rb)) {
                let qs = field_range(t, nb, "qs");
                let mut want = p[qs.clone()].to_vec();
                int::qs_to_lanes(&mut want);
                assert_eq!(
                    l[qs.clone()],
                    want[..],
                    "{}: qs in the lane layout",
                    t.name()
                );
                assert_ne!(l[qs.clone()], p[qs.clone()], "{}: the run moved", t.name());
                assert_eq!(
                    l[..qs.start],
                    p[..qs.start],
                    "{}: headers as split",
                    t.name()
                );
                let mut joined = vec![0u8; rb];
                join_row(t, true, l, &mut joined);
                let k = (p.as_ptr() as usize - plain.as_ptr() as usize) / rb;
                assert_eq!(joined, bytes[k * rb..(k + 1) * rb], "{}: joined", t.name());
            }
        }
    }

    /// The f32 GEMV over split rows, on every ISA, against the rows dequantized by the
    /// reference and an f64 dot.
    #[test]
    fn gemv_rows_matches_dequantized_rows() {
        // Nine blocks: a whole run of eight in the lane layout and one after it.
        let (nb, rows) = (9, 4);
        let x: Vec<f32> = (0..nb * QK)
            .map(|i| ((i * 7 % 19) as f32 - 9.0) / 8.0)
            .collect();
        for (t, lanes) in [
            (Gt::Q4_0, false),
            (Gt::Q4_0, true),
            (Gt::Q4_1, false),
            (Gt::Q4_1, true),
            (Gt::Q5_0, false),
            (Gt::Q5_1, false),
        ] {
            let mut w: Vec<u8> = (0..rows * nb * t.block_bytes())
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            // Finite f16 scales and minimums (the first fields of each row).
            let heads = if field_range(t, 1, "m").is_empty() {
                1
            } else {
                2
            };
            for row in w.chunks_exact_mut(nb * t.block_bytes()) {
                for (k, h) in row[..2 * nb * heads].chunks_exact_mut(2).enumerate() {
                    h.copy_from_slice(&half::f16::from_f32(0.01 * (k as f32 - 2.0)).to_le_bytes());
                }
            }
            let mut deq = vec![0.0f32; rows * nb * QK];
            dequant_rows_ref(t, lanes, nb * QK, &w, &mut deq);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; rows];
                gemv_rows(isa, t, lanes, &w, &x, &mut y);
                for (r, &got) in y.iter().enumerate() {
                    let row = &deq[r * nb * QK..(r + 1) * nb * QK];
                    let exp: f64 = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag: f64 = row
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| (*a * *b).abs() as f64)
                        .sum();
                    let bound =
                        tol::DOT_REL as f64 * ((nb * QK) as f64).sqrt() * mag + tol::DOT_ABS as f64;
                    assert!(
                        (got as f64 - exp).abs() <= bound,
                        "gemv_rows {} isa={} row {r}: expected {exp}, actual {got}",
                        t.name(),
                        isa.name()
                    );
                }
            }
        }
    }
}
