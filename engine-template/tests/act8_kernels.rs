//! The 8-bit activation path (`kernels::act8`): the quantizer is bit-identical on every ISA and
//! within half a step of its input; every GEMV agrees with its scalar reference on every ISA
//! (lengths of 0 to 5 blocks, 0 to 17 rows, misaligned rows, all 16 nibble and 256 byte codes,
//! the codes that come closest to saturating `vpmaddubsw`); every batched (prefill) kernel
//! agrees with its reference (0 to 9 tokens, group counts with and without a tail); the int4
//! g32 lane layout round-trips, puts each group in its own lane, and its GEMV matches too; and the
//! reference itself stays within the activation-rounding bound of an f64 dot with the
//! unquantized activations.

// `!(err <= bound)` on purpose: a NaN result must count as a failure.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use clocher_engine::kernels::act8::{self, ActQ8, QK8};
use clocher_engine::kernels::blocks::{
    self, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};
use clocher_engine::kernels::int::{self, Clip, Scheme};
use clocher_engine::kernels::{rows, tol, Isa};
use half::f16;

#[allow(dead_code)]
mod common;
use common::{bytes, dot_f64, values};

/// Activations with a zero block, a block of ties (odd multiples of half a step) and a block
/// that reaches +-max exactly, then sign-mixed values.
fn activations(cols: usize, seed: u32) -> Vec<f32> {
    let mut x = values(cols, seed);
    for (i, v) in x.iter_mut().enumerate() {
        match i / QK8 {
            1 => *v = 0.0,
            2 => *v = (i % QK8) as f32 - 15.5,
            3 => *v = if i % 2 == 0 { 127.0 } else { -127.0 },
            _ => {}
        }
    }
    x
}

fn quantized(isa: Isa, x: &[f32]) -> ActQ8 {
    let mut q = ActQ8::default();
    q.quantize(isa, x);
    q
}

#[test]
fn quantizer_is_bit_identical_on_every_isa_and_within_half_a_step() {
    for cols in [0usize, 32, 64, 128, 160, 576] {
        for mis in 0..3 {
            let xbuf = activations(cols + mis, cols as u32 + 1);
            let x = &xbuf[mis..];
            let want = quantized(Isa::Scalar, x);
            for (i, (&q, &v)) in want.qs.iter().zip(x).enumerate() {
                let d = want.d[i / QK8];
                assert!((-127..=127).contains(&q), "cols={cols} index={i}: code {q}");
                assert!(
                    (d * q as f32 - v).abs() <= d * 0.5 * (1.0 + 1e-6),
                    "cols={cols} index={i}: {v} quantized to {q} * {d}"
                );
            }
            for isa in Isa::available() {
                let got = quantized(isa, x);
                for k in 0..cols / QK8 {
                    assert_eq!(
                        (&got.qs[k * QK8..(k + 1) * QK8], got.d[k], got.s[k]),
                        (&want.qs[k * QK8..(k + 1) * QK8], want.d[k], want.s[k]),
                        "quantize_q8 {} cols={cols} misalign={mis} block={k}: actual vs expected",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// One format's weights: raw bytes for `rows` rows of `cols`, a kernel over them on `isa`,
/// and its reference.
type Run<'a> = dyn Fn(Isa, &[u8], &ActQ8, &mut [f32]) + 'a;

/// SIMD against the reference on every ISA; rows may start misaligned in memory.
fn check_every_isa(label: &str, cols: usize, rows: usize, w: &[u8], deq: &[f32], run: &Run<'_>) {
    let mut fails = vec![];
    for mis in 0..3 {
        let mut wbuf = vec![0u8; mis];
        wbuf.extend_from_slice(w);
        let x = quantized(Isa::Scalar, &activations(cols, (cols + rows + mis) as u32));
        let xd = x.dequant();
        let mut want = vec![f32::NAN; rows];
        run(Isa::Scalar, &wbuf[mis..], &x, &mut want);
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; rows];
            run(isa, &wbuf[mis..], &x, &mut got);
            for r in 0..rows {
                let (exp, mag) = dot_f64(&deq[r * cols..(r + 1) * cols], &xd);
                let bound = tol::QUANT_DOT_REL as f64 * (cols.max(1) as f64).sqrt() * mag
                    + tol::DOT_ABS as f64;
                for (what, v) in [("reference", want[r]), ("kernel", got[r])] {
                    if !((v as f64 - exp).abs() <= bound) {
                        fails.push(format!(
                            "{label} {} ({what}) cols={cols} rows={rows} misalign={mis} index={r}: expected {exp}, actual {v} (bound {bound:e})",
                            isa.name()
                        ));
                    }
                }
            }
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

fn as_bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn blocks_of<T: bytemuck::Pod>(w: &[u8]) -> Vec<T> {
    bytemuck::pod_collect_to_vec(w)
}

/// Block `i`'s scale: small, varied, exact in f16.
fn block_scale(i: usize) -> f16 {
    f16::from_f32(0.01 + (i % 7) as f32 * 1e-3)
}

/// `n` Q4_0 blocks whose nibbles run through every code in every position.
fn q4_0_blocks(n: usize) -> Vec<BlockQ4_0> {
    (0..n)
        .map(|i| BlockQ4_0 {
            d: block_scale(i),
            qs: std::array::from_fn(|j| (i * 37 + j * 11) as u8),
        })
        .collect()
}

/// `n` Q4_1 blocks, as [`q4_0_blocks`] with a varied `m`.
fn q4_1_blocks(n: usize) -> Vec<BlockQ4_1> {
    (0..n)
        .map(|i| BlockQ4_1 {
            d: block_scale(i),
            m: f16::from_f32(-0.08 + (i % 5) as f32 * 2e-2),
            qs: std::array::from_fn(|j| (i * 53 + j * 17) as u8),
        })
        .collect()
}

/// Every 5-bit code: nibbles in every position, high bits from a hashed stream; Q5_1's
/// offsets vary by block.
fn q5_blocks(n: usize) -> (Vec<BlockQ5_0>, Vec<BlockQ5_1>) {
    let q50: Vec<BlockQ5_0> = (0..n)
        .map(|i| BlockQ5_0 {
            d: block_scale(i),
            qh: ((i as u32).wrapping_mul(0x9E37_79B9) ^ 0x5A5A_0FF0).to_le_bytes(),
            qs: std::array::from_fn(|j| (i * 29 + j * 13) as u8),
        })
        .collect();
    let q51 = q50
        .iter()
        .enumerate()
        .map(|(i, b)| BlockQ5_1 {
            d: b.d,
            m: f16::from_f32(-0.1 + (i % 3) as f32 * 0.05),
            qh: b.qh,
            qs: b.qs,
        })
        .collect();
    (q50, q51)
}

/// `n` Q8_0 blocks, rows of `nb`, through every byte code; block 0 of each row is all -128
/// (the largest |w| that `vpmaddubsw` sees).
fn q8_0_blocks(n: usize, nb: usize) -> Vec<BlockQ8_0> {
    (0..n)
        .map(|i| BlockQ8_0 {
            d: block_scale(i),
            qs: std::array::from_fn(|j| {
                if i % nb.max(1) == 0 {
                    -128
                } else {
                    (i * 31 + j * 7) as u8 as i8
                }
            }),
        })
        .collect()
}

#[test]
fn block_gemvs_every_isa_match_reference() {
    for nb in 0..=5usize {
        for rows in [0usize, 1, 3, 17] {
            let (cols, n) = (nb * QK8, nb * rows);
            // Every nibble code in every position, and every byte code.
            let (q40, q41) = (q4_0_blocks(n), q4_1_blocks(n));
            let q80 = q8_0_blocks(n, nb);
            let (q50, q51) = q5_blocks(n);
            let mut deq = vec![0.0f32; n * QK8];
            blocks::dequant_q5_0_ref(&q50, &mut deq);
            check_every_isa(
                "gemv_q5_0_q8",
                cols,
                rows,
                &as_bytes(&q50),
                &deq,
                &|isa, w, x, y| act8::gemv_q5_0_q8(isa, &blocks_of(w), x, y),
            );
            blocks::dequant_q5_1_ref(&q51, &mut deq);
            check_every_isa(
                "gemv_q5_1_q8",
                cols,
                rows,
                &as_bytes(&q51),
                &deq,
                &|isa, w, x, y| act8::gemv_q5_1_q8(isa, &blocks_of(w), x, y),
            );
            blocks::dequant_q4_0_ref(&q40, &mut deq);
            check_every_isa(
                "gemv_q4_0_q8",
                cols,
                rows,
                &as_bytes(&q40),
                &deq,
                &|isa, w, x, y| act8::gemv_q4_0_q8(isa, &blocks_of(w), x, y),
            );
            blocks::dequant_q4_1_ref(&q41, &mut deq);
            check_every_isa(
                "gemv_q4_1_q8",
                cols,
                rows,
                &as_bytes(&q41),
                &deq,
                &|isa, w, x, y| act8::gemv_q4_1_q8(isa, &blocks_of(w), x, y),
            );
            blocks::dequant_q8_0_ref(&q80, &mut deq);
            check_every_isa(
                "gemv_q8_0_q8",
                cols,
                rows,
                &as_bytes(&q80),
                &deq,
                &|isa, w, x, y| act8::gemv_q8_0_q8(isa, &blocks_of(w), x, y),
            );
        }
    }
}

#[test]
fn k_quant_gemvs_every_isa_match_reference() {
    // Q4_K also runs the batched tile (prefill), checked for 0-9 tokens.
    for nb in 0..=2usize {
        for rows in [0usize, 1, 3, 17] {
            let (cols, n) = (nb * blocks::QK_K, nb * rows);
            let half = |i: usize, lo: f32| f16::from_f32(lo + (i % 5) as f32 * 1e-3);
            let mut q4k: Vec<BlockQ4K> =
                bytemuck::pod_collect_to_vec(&bytes(n * 144, 7 + n as u32));
            for (i, b) in q4k.iter_mut().enumerate() {
                (b.d, b.dmin) = (half(i, 0.002), half(i + 2, 0.001));
            }
            let mut q6k: Vec<BlockQ6K> =
                bytemuck::pod_collect_to_vec(&bytes(n * 210, 9 + n as u32));
            for (i, b) in q6k.iter_mut().enumerate() {
                b.d = half(i, 0.0005);
                if i == 0 {
                    (b.scales[0], b.scales[1]) = (i8::MIN, i8::MAX);
                }
            }
            let mut deq = vec![0.0f32; cols * rows];
            blocks::dequant_q4_k_ref(&q4k, &mut deq);
            check_every_isa(
                "gemv_q4_k_q8",
                cols,
                rows,
                &as_bytes(&q4k),
                &deq,
                &|isa, w, x, y| act8::gemv_q4_k_q8(isa, &blocks_of(w), x, y),
            );
            check_gemm_every_isa(
                "gemm_q4_k_q8",
                cols,
                rows,
                &as_bytes(&q4k),
                &deq,
                &|isa, w, xs, y| act8::gemm_q4_k_q8(isa, &blocks_of(w), xs, y),
            );
            blocks::dequant_q6_k_ref(&q6k, &mut deq);
            check_every_isa(
                "gemv_q6_k_q8",
                cols,
                rows,
                &as_bytes(&q6k),
                &deq,
                &|isa, w, x, y| act8::gemv_q6_k_q8(isa, &blocks_of(w), x, y),
            );
        }
    }
}

#[test]
fn int8_gemv_every_isa_matches_reference() {
    for nb in 0..=5usize {
        for rows in [0usize, 1, 3, 17] {
            let cols = nb * QK8;
            // Rows of every byte code, with row scales of either sign of offset.
            let mut w = vec![];
            for r in 0..rows {
                w.extend_from_slice(&(0.01f32 + r as f32 * 1e-3).to_le_bytes());
                w.extend_from_slice(&(-1.3f32 + r as f32 * 0.2).to_le_bytes());
                w.extend((0..cols).map(|j| (r * 101 + j * 13) as u8));
            }
            let mut deq = vec![0.0f32; rows * cols];
            int::dequant_int8_ref(cols, &w, &mut deq);
            check_every_isa("gemv_int8_q8", cols, rows, &w, &deq, &|isa, w, x, y| {
                act8::gemv_int8_q8(isa, w, x, y)
            });
        }
    }
}

#[test]
fn int4_gemv_every_isa_matches_reference() {
    for group in [32usize, 64, 128] {
        for ng in [0usize, 1, 3, 8, 9, 18] {
            for scheme in [Scheme::Asym, Scheme::Sym] {
                let rows = 5;
                let cols = group * ng;
                let w = values(rows * cols, (cols + group) as u32);
                let q = if cols == 0 {
                    vec![]
                } else {
                    int::quantize_int4(&w, cols, group, scheme, Clip::None).unwrap()
                };
                let mut deq = vec![0.0f32; rows * cols];
                if cols > 0 {
                    int::dequant_int4_ref(group, cols, &q, &mut deq);
                }
                let label = format!("gemv_int4_q8 g{group} {scheme:?}");
                check_every_isa(
                    &label,
                    cols,
                    if cols == 0 { 0 } else { rows },
                    &q,
                    &deq,
                    &|isa, w, x, y| act8::gemv_int4_q8(isa, group, w, x, y),
                );
            }
        }
    }
}

#[test]
fn int4_lanes_layout_round_trips_and_kernels_match_reference() {
    // Runs of eight groups with and without plain-order groups after them (576 = 2 runs + 2).
    for ng in [0usize, 1, 7, 8, 9, 16, 18, 24] {
        for scheme in [Scheme::Asym, Scheme::Sym] {
            // 17 rows: whole tiles of two, an odd last row, and rows past the prefetch distance.
            let (rows, cols) = (17, 32 * ng);
            let w = values(rows * cols, (cols + 7) as u32);
            let plain = if cols == 0 {
                vec![]
            } else {
                int::quantize_int4(&w, cols, 32, scheme, Clip::None).unwrap()
            };
            let mut lanes = plain.clone();
            int::int4_to_lanes(&mut lanes, cols);
            let mut back = lanes.clone();
            int::int4_from_lanes(&mut back, cols);
            if let Some(i) = (0..plain.len()).find(|&i| back[i] != plain[i]) {
                panic!(
                    "int4 lanes ng={ng} {scheme:?}: round trip, index={i}: expected {}, actual {}",
                    plain[i], back[i]
                );
            }
            let mut deq = vec![0.0f32; rows * cols];
            if cols > 0 {
                int::dequant_int4_ref(32, cols, &plain, &mut deq);
            }
            let rows = if cols == 0 { 0 } else { rows };
            let label = format!("gemm_int4_lanes_q8 one token ng={ng} {scheme:?}");
            check_every_isa(&label, cols, rows, &lanes, &deq, &|isa, w, x, y| {
                let mut x = x.clone();
                x.fill_lanes();
                act8::gemm_int4_lanes_q8(isa, w, std::slice::from_ref(&x), y)
            });
            // The f32 paths read the lane layout too: widening (embedding rows, the f32 GEMM's
            // copies) and the f32 GEMV.
            let x = activations(cols, 5);
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; rows * cols];
                int::dequant_int4_lanes(isa, cols, &lanes, &mut got);
                for (i, (&e, &a)) in deq.iter().zip(&got).enumerate() {
                    assert!(
                        (e - a).abs() <= tol::ELEMENTWISE_REL * e.abs().max(1e-3),
                        "dequant_int4_lanes {} ng={ng} {scheme:?} index={i}: expected {e}, actual {a}",
                        isa.name()
                    );
                }
                let mut y = vec![f32::NAN; rows];
                int::gemv_int4_lanes(isa, &lanes, &x, &mut y);
                for (r, &v) in y.iter().enumerate() {
                    let (exp, mag) = dot_f64(&deq[r * cols..(r + 1) * cols], &x);
                    let bound = tol::QUANT_DOT_REL as f64 * (cols as f64).sqrt() * mag
                        + tol::DOT_ABS as f64;
                    assert!(
                        (v as f64 - exp).abs() <= bound,
                        "gemv_int4_lanes {} ng={ng} {scheme:?} index={r}: expected {exp}, actual {v}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn int4_lanes_put_each_group_in_its_own_lane() {
    // One row of 9 groups (a run and a plain-order group after it) whose weight `e` of group
    // `j` has code `(j + e + 8 * (e / 16)) % 16`: every code in every group, and weights `e`
    // and `e + 16` (one plain byte) always apart, so a swap of the nibbles shows.
    let (ng, cols) = (9usize, 288usize);
    let mut row = vec![0u8; int::int4_row_bytes(cols, 32)];
    let qs = int::int4_qs_offset(ng);
    let code = |j: usize, e: usize| ((j + e + 8 * (e / 16)) % 16) as u8;
    for j in 0..ng {
        for b in 0..16 {
            row[qs + 16 * j + b] = code(j, b) | code(j, b + 16) << 4;
        }
    }
    let plain = row.clone();
    int::int4_to_lanes(&mut row, cols);
    for l in 0..4 {
        for j in 0..8 {
            for i in 0..4 {
                let byte = row[qs + 32 * l + 4 * j + i];
                let want = code(j, 8 * l + i) | code(j, 8 * l + 4 + i) << 4;
                assert_eq!(byte, want, "int4 lanes: load {l} lane {j} byte {i}");
            }
        }
    }
    assert_eq!(
        row[qs + 128..],
        plain[qs + 128..],
        "int4 lanes: the group after the run keeps its plain order"
    );
    // The activations' lanes match: unit `v` of block `j` at 32 v + 4 j.
    for isa in Isa::available() {
        let mut x = quantized(isa, &activations(cols + 64, 3));
        x.fill_lanes();
        assert_eq!(
            x.lanes().len(),
            256,
            "{}: lanes of one whole run",
            isa.name()
        );
        for v in 0..8 {
            for j in 0..8 {
                for i in 0..4 {
                    assert_eq!(
                        x.lanes()[32 * v + 4 * j + i],
                        x.qs[32 * j + 4 * v + i],
                        "{}: activation lanes unit {v} block {j} byte {i}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn int4_lanes_gemv_sums_the_largest_products_without_overflow() {
    // Every nibble 15 (scale 1, min 0) against activations of +127 (and -127): each i16 lane
    // of the eight summed `vpmaddubsw` reaches 8 * 2 * 15 * 127 = 30480.
    let (ng, cols, rows) = (16usize, 512usize, 3usize);
    let rb = int::int4_row_bytes(cols, 32);
    let mut w = vec![0u8; rows * rb];
    for row in w.chunks_exact_mut(rb) {
        row[..4].copy_from_slice(&[0x80, 0x3f, 0, 0]); // d = 1 (bf16), dmin = 0
        row[int::INT4_HEADER..int::INT4_HEADER + ng].fill(1);
        row[int::int4_qs_offset(ng)..].fill(0xff);
    }
    let mut deq = vec![0.0f32; rows * cols];
    int::dequant_int4_ref(32, cols, &w, &mut deq);
    assert!(
        deq.iter().all(|&v| v == 15.0),
        "all-15 rows dequantize to 15"
    );
    int::int4_to_lanes(&mut w, cols);
    for sign in [1.0f32, -1.0] {
        let mut x = quantized(Isa::Scalar, &vec![127.0 * sign; cols]);
        x.fill_lanes();
        // One token (decode's tile) and three (prefill's, with the scales in `vpmaddwd`).
        for n in [1, 3] {
            let xs = vec![x.clone(); n];
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; n * rows];
                act8::gemm_int4_lanes_q8(isa, &w, &xs, &mut y);
                for (r, &v) in y.iter().enumerate() {
                    let want = sign * 15.0 * 127.0 * cols as f32;
                    assert!(
                        (v - want).abs() <= tol::DOT_ABS,
                        "gemm_int4_lanes_q8 {} tokens={n} index={r}: expected {want}, actual {v}",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// A batched kernel: raw weight bytes, several tokens, `[tokens, rows]` outputs.
type GemmRun<'a> = dyn Fn(Isa, &[u8], &[ActQ8], &mut [f32]) + 'a;

/// A batched (prefill) kernel against the scalar reference (the GEMV once per token) on every
/// ISA: 0 to 9 tokens (whole tiles of four and every remainder), rows misaligned in memory, and
/// tokens whose activations differ.
fn check_gemm_every_isa(
    label: &str,
    cols: usize,
    rows: usize,
    w: &[u8],
    deq: &[f32],
    run: &GemmRun<'_>,
) {
    let mut fails = vec![];
    for n in 0..=9usize {
        let xs: Vec<ActQ8> = (0..n)
            .map(|i| quantized(Isa::Scalar, &activations(cols, (i * 7 + cols) as u32)))
            .collect();
        for mis in [0usize, 1] {
            let mut wbuf = vec![0u8; mis];
            wbuf.extend_from_slice(w);
            let w = &wbuf[mis..];
            let mut want = vec![f32::NAN; n * rows];
            run(Isa::Scalar, w, &xs, &mut want);
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; n * rows];
                run(isa, w, &xs, &mut got);
                for (idx, (&e, &a)) in want.iter().zip(&got).enumerate() {
                    let (i, r) = (idx / rows, idx % rows);
                    let (exp, mag) = dot_f64(&deq[r * cols..(r + 1) * cols], &xs[i].dequant());
                    let bound = tol::QUANT_DOT_REL as f64 * (cols as f64).sqrt() * mag
                        + tol::DOT_ABS as f64;
                    for (what, v) in [("reference", e), ("kernel", a)] {
                        if !((v as f64 - exp).abs() <= bound) {
                            fails.push(format!(
                                "{label} {} ({what}) cols={cols} tokens={n} misalign={mis} index={idx} (token {i}, row {r}): expected {exp}, actual {v} (bound {bound:e})",
                                isa.name()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Group counts with and without groups past the last run of eight (pairs, an odd group,
/// both): int4 (groups of 32 run the batched kernel, 64 the GEMV per token), the
/// 4-bit GGUF blocks (every nibble code), and the 4- and 5-bit ones split by rows.
#[test]
fn gemms_every_isa_match_reference() {
    let rows = 5;
    for ng in [1usize, 2, 3, 4, 7, 8, 9, 14, 18, 19, 20, 23] {
        for group in [32usize, 64] {
            let cols = group * ng;
            let w = values(rows * cols, (cols + 3) as u32);
            let q = int::quantize_int4(&w, cols, group, Scheme::Asym, Clip::None).unwrap();
            let mut deq = vec![0.0f32; rows * cols];
            int::dequant_int4_ref(group, cols, &q, &mut deq);
            check_gemm_every_isa(
                &format!("gemm_int4_q8 g{group}"),
                cols,
                rows,
                &q,
                &deq,
                &|isa, w, xs, y| act8::gemm_int4_q8(isa, group, w, xs, y),
            );
            if group == int::LANE_GROUP {
                let mut lanes = q.clone();
                int::int4_to_lanes(&mut lanes, cols);
                check_gemm_every_isa(
                    "gemm_int4_lanes_q8",
                    cols,
                    rows,
                    &lanes,
                    &deq,
                    &|isa, w, xs, y| {
                        let mut xs = xs.to_vec();
                        xs.iter_mut().for_each(ActQ8::fill_lanes);
                        act8::gemm_int4_lanes_q8(isa, w, &xs, y)
                    },
                );
            }
        }
        let (cols, n) = (ng * QK8, ng * rows);
        let (q40, q41) = (q4_0_blocks(n), q4_1_blocks(n));
        let (q50, q51) = q5_blocks(n);
        let mut deq = vec![0.0f32; n * QK8];
        // The blocks split by rows (the packer's layout for them): the same values.
        for (t, bytes) in [
            (GgmlType::Q4_0, as_bytes(&q40)),
            (GgmlType::Q4_1, as_bytes(&q41)),
            (GgmlType::Q5_0, as_bytes(&q50)),
            (GgmlType::Q5_1, as_bytes(&q51)),
        ] {
            t.dequant(&bytes, &mut deq);
            // And the 4-bit ones with their nibbles in the lane layout (runs of eight blocks).
            for lanes in [false, true]
                .into_iter()
                .filter(|&l| !l || rows::lanes_ok(t))
            {
                let mut split = vec![0u8; bytes.len()];
                rows::split_rows(t, ng, lanes, &bytes, &mut split);
                check_gemm_every_isa(
                    &format!("gemm_split_q8 {} lanes={lanes}", t.name()),
                    cols,
                    rows,
                    &split,
                    &deq,
                    &|isa, w, xs, y| {
                        let mut xs = xs.to_vec();
                        if lanes {
                            xs.iter_mut().for_each(ActQ8::fill_lanes);
                        }
                        act8::gemm_split_q8(isa, t, lanes, w, &xs, y)
                    },
                );
            }
        }
        blocks::dequant_q4_0_ref(&q40, &mut deq);
        check_gemm_every_isa(
            "gemm_q4_0_q8",
            cols,
            rows,
            &as_bytes(&q40),
            &deq,
            &|isa, w, xs, y| act8::gemm_q4_0_q8(isa, &blocks_of(w), xs, y),
        );
        blocks::dequant_q4_1_ref(&q41, &mut deq);
        check_gemm_every_isa(
            "gemm_q4_1_q8",
            cols,
            rows,
            &as_bytes(&q41),
            &deq,
            &|isa, w, xs, y| act8::gemm_q4_1_q8(isa, &blocks_of(w), xs, y),
        );
        let q80 = q8_0_blocks(n, ng);
        blocks::dequant_q8_0_ref(&q80, &mut deq);
        check_gemm_every_isa(
            "gemm_q8_0_q8",
            cols,
            rows,
            &as_bytes(&q80),
            &deq,
            &|isa, w, xs, y| act8::gemm_q8_0_q8(isa, &blocks_of(w), xs, y),
        );
    }
}

/// The 8-bit path against f32 activations: quantizing moves each activation by at most half
/// its block's step `d`, so a dot moves by at most `sum |w_i| * d(i) / 2`.
#[test]
fn reference_stays_within_activation_rounding_of_f32() {
    let (rows, cols) = (7, 576);
    let w = values(rows * cols, 5);
    let q = int::quantize_int4(&w, cols, 32, Scheme::Asym, Clip::None).unwrap();
    let mut deq = vec![0.0f32; rows * cols];
    int::dequant_int4_ref(32, cols, &q, &mut deq);
    let x = activations(cols, 9);
    let xq = quantized(Isa::Scalar, &x);
    let mut y = vec![0.0f32; rows];
    act8::gemv_int4_q8_ref(32, &q, &xq, &mut y);
    for (r, &got) in y.iter().enumerate() {
        let row = &deq[r * cols..(r + 1) * cols];
        let (exp, mag) = dot_f64(row, &x);
        let act: f64 = row
            .iter()
            .enumerate()
            .map(|(i, w)| w.abs() as f64 * xq.d[i / QK8] as f64 / 2.0)
            .sum();
        let bound = act + tol::QUANT_DOT_REL as f64 * (cols as f64).sqrt() * mag;
        assert!(
            (got as f64 - exp).abs() <= bound,
            "int4 q8 index={r}: expected {exp}, actual {got} (bound {bound:e})"
        );
    }
}
