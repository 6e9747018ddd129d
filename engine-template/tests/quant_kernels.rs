//! Block-format GEMV (fused dequantize + dot) for every GGUF format and ISA, against an f64 dot
//! of the bit-exact dequantized weights: real llama.cpp blocks from the shared fixtures, 0 to 3
//! blocks per row, misaligned activations, and every nibble / byte code of Q4_0, Q4_1, Q5_0,
//! Q5_1 and Q8_0.

// `!(err <= bound)` on purpose: a NaN result must count as a failure.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use clocher_engine::kernels::blocks::{self as b, GgmlType};
use clocher_engine::kernels::{quant, tol, Isa};
use half::f16;
use std::path::PathBuf;

#[allow(dead_code)]
mod common;
use common::{dot_f64, values};

type Gemv<B> = fn(Isa, &[B], &[f32], &mut [f32]);

fn fixture(name: &str) -> Vec<u8> {
    let shared = std::env::var_os("CLOCHER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    let path = shared.join("fixtures/gguf-blocks").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Checks `gemv` on `rows` rows of `nb` blocks each (taken from `blocks`), for every ISA and
/// activation misalignment; returns every failure.
fn check<B: bytemuck::Pod>(
    ty: GgmlType,
    blocks: &[B],
    nb_max: usize,
    gemv: Gemv<B>,
) -> Vec<String> {
    let elems = ty.block_elems();
    let mut fails = vec![];
    for isa in Isa::available() {
        for nb in 0..=nb_max {
            for rows in [0usize, 1, 2, 3] {
                if rows * nb > blocks.len() {
                    continue;
                }
                let w = &blocks[..rows * nb];
                let mut deq = vec![0.0f32; w.len() * elems];
                ty.dequant(bytemuck::cast_slice(w), &mut deq);
                for mis in 0..3 {
                    let xbuf = values(nb * elems + mis, (nb * 7 + rows) as u32);
                    let x = &xbuf[mis..];
                    let mut y = vec![f32::NAN; rows];
                    gemv(isa, w, x, &mut y);
                    for r in 0..rows {
                        let row = &deq[r * nb * elems..(r + 1) * nb * elems];
                        let (exp, mag) = dot_f64(row, x);
                        let bound =
                            tol::QUANT_DOT_REL as f64 * ((nb * elems).max(1) as f64).sqrt() * mag
                                + tol::DOT_ABS as f64;
                        let got = y[r] as f64;
                        if !((got - exp).abs() <= bound) {
                            fails.push(format!(
                                "gemv_{} isa={} blocks={nb} rows={rows} misalign={mis} index={r}: expected {exp}, actual {got}",
                                ty.name(),
                                isa.name()
                            ));
                        }
                    }
                }
            }
        }
    }
    fails
}

fn from_fixture<B: bytemuck::Pod>(ty: GgmlType) -> Vec<B> {
    let bytes = fixture(&format!("{}.blocks", ty.name()));
    assert_eq!(
        bytes.len() % ty.block_bytes(),
        0,
        "{}: fixture is not whole blocks",
        ty.name()
    );
    bytemuck::pod_collect_to_vec(&bytes)
}

#[test]
fn every_format_matches_f64_oracle_on_real_blocks() {
    let mut fails = vec![];
    let mut checked = vec![];
    macro_rules! fmt {
        ($ty:expr, $block:ty, $gemv:path) => {{
            let blocks: Vec<$block> = from_fixture($ty);
            let per_row = blocks.len() / 4;
            fails.extend(check($ty, &blocks, per_row.min(3), $gemv));
            checked.push($ty.name());
        }};
    }
    fmt!(GgmlType::Q4_0, b::BlockQ4_0, quant::gemv_q4_0);
    fmt!(GgmlType::Q4_1, b::BlockQ4_1, quant::gemv_q4_1);
    fmt!(GgmlType::Q5_0, b::BlockQ5_0, quant::gemv_q5_0);
    fmt!(GgmlType::Q5_1, b::BlockQ5_1, quant::gemv_q5_1);
    fmt!(GgmlType::Q8_0, b::BlockQ8_0, quant::gemv_q8_0);
    fmt!(GgmlType::Q3K, b::BlockQ3K, quant::gemv_q3_k);
    fmt!(GgmlType::Q4K, b::BlockQ4K, quant::gemv_q4_k);
    fmt!(GgmlType::Q5K, b::BlockQ5K, quant::gemv_q5_k);
    fmt!(GgmlType::Q6K, b::BlockQ6K, quant::gemv_q6_k);
    fmt!(GgmlType::IQ4NL, b::BlockIQ4NL, quant::gemv_iq4_nl);
    fmt!(GgmlType::TQ1_0, b::BlockTQ1_0, quant::gemv_tq1_0);
    fmt!(GgmlType::TQ2_0, b::BlockTQ2_0, quant::gemv_tq2_0);
    fmt!(GgmlType::MXFP4, b::BlockMXFP4, quant::gemv_mxfp4);
    assert_eq!(checked.len(), 13, "{checked:?}");
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// 16 blocks whose 256 nibble-pair bytes cover every (low, high) nibble combination.
fn all_nibbles() -> Vec<[u8; 16]> {
    (0..16)
        .map(|blk| std::array::from_fn(|j| (blk * 16 + j) as u8))
        .collect()
}

#[test]
fn every_nibble_and_byte_code() {
    let d = f16::from_f32(0.75);
    let q4_0: Vec<b::BlockQ4_0> = all_nibbles()
        .into_iter()
        .map(|qs| b::BlockQ4_0 { d, qs })
        .collect();
    let q4_1: Vec<b::BlockQ4_1> = all_nibbles()
        .into_iter()
        .map(|qs| b::BlockQ4_1 {
            d,
            m: f16::from_f32(-1.5),
            qs,
        })
        .collect();
    let q8_0: Vec<b::BlockQ8_0> = (0..8)
        .map(|blk| b::BlockQ8_0 {
            d,
            qs: std::array::from_fn(|j| (blk * 32 + j) as u8 as i8),
        })
        .collect();
    // 5-bit formats: every nibble pair, with the fifth bit set in complementary patterns.
    let qh = |blk: usize| {
        if blk.is_multiple_of(2) {
            [0x55, 0xaa, 0x0f, 0xf0]
        } else {
            [0xaa, 0x55, 0xf0, 0x0f]
        }
    };
    let q5_0: Vec<b::BlockQ5_0> = all_nibbles()
        .into_iter()
        .enumerate()
        .map(|(i, qs)| b::BlockQ5_0 { d, qh: qh(i), qs })
        .collect();
    let q5_1: Vec<b::BlockQ5_1> = all_nibbles()
        .into_iter()
        .enumerate()
        .map(|(i, qs)| b::BlockQ5_1 {
            d,
            m: f16::from_f32(0.25),
            qh: qh(i),
            qs,
        })
        .collect();
    let mut fails = check(GgmlType::Q4_0, &q4_0, 16, quant::gemv_q4_0);
    fails.extend(check(GgmlType::Q5_0, &q5_0, 16, quant::gemv_q5_0));
    fails.extend(check(GgmlType::Q5_1, &q5_1, 16, quant::gemv_q5_1));
    fails.extend(check(GgmlType::Q4_1, &q4_1, 16, quant::gemv_q4_1));
    fails.extend(check(GgmlType::Q8_0, &q8_0, 8, quant::gemv_q8_0));
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// The batched GEMM's row widening: bit-identical to the reference dequantization on every
/// ISA, for the shared fixtures' real blocks and for blocks of every code and scale sign.
#[test]
fn widening_every_isa_is_bit_identical_to_reference() {
    fn same<B: bytemuck::Pod>(
        ty: GgmlType,
        blocks: &[B],
        on: fn(Isa, &[B], &mut [f32]),
        reference: fn(&[B], &mut [f32]),
    ) -> Vec<String> {
        let n = blocks.len() * ty.block_elems();
        let mut want = vec![0.0f32; n];
        reference(blocks, &mut want);
        let mut fails = vec![];
        for isa in Isa::available() {
            for len in [0, 1, blocks.len()] {
                let mut got = vec![f32::NAN; len * ty.block_elems()];
                on(isa, &blocks[..len], &mut got);
                if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                    fails.push(format!(
                        "dequant {} isa={} blocks={len} index={i}: expected {}, actual {}",
                        ty.name(),
                        isa.name(),
                        want[i],
                        got[i]
                    ));
                }
            }
        }
        fails
    }
    // Every code under both signs of scale, then the fixtures' real blocks, per format.
    let (mut q4_0, mut q4_1, mut q5_0, mut q5_1, mut q8_0) = (
        from_fixture::<b::BlockQ4_0>(GgmlType::Q4_0),
        from_fixture::<b::BlockQ4_1>(GgmlType::Q4_1),
        from_fixture::<b::BlockQ5_0>(GgmlType::Q5_0),
        from_fixture::<b::BlockQ5_1>(GgmlType::Q5_1),
        from_fixture::<b::BlockQ8_0>(GgmlType::Q8_0),
    );
    for (sign, d) in [(1.0f32, 0.75f32), (-1.0, 3e-4)] {
        let d = f16::from_f32(sign * d);
        let m = f16::from_f32(-sign * 1.5);
        let qh = |i: usize| ((i as u32).wrapping_mul(0x9E37_79B9) ^ 0x0FF0_5AA5).to_le_bytes();
        for (i, qs) in all_nibbles().into_iter().enumerate() {
            q4_0.push(b::BlockQ4_0 { d, qs });
            q4_1.push(b::BlockQ4_1 { d, m, qs });
            q5_0.push(b::BlockQ5_0 { d, qh: qh(i), qs });
            q5_1.push(b::BlockQ5_1 {
                d,
                m,
                qh: qh(i),
                qs,
            });
        }
        q8_0.extend((0..8).map(|blk| b::BlockQ8_0 {
            d,
            qs: std::array::from_fn(|j| (blk * 32 + j) as u8 as i8),
        }));
    }
    let mut fails = same(
        GgmlType::Q4_0,
        &q4_0,
        quant::dequant_q4_0,
        b::dequant_q4_0_ref,
    );
    fails.extend(same(
        GgmlType::Q4_1,
        &q4_1,
        quant::dequant_q4_1,
        b::dequant_q4_1_ref,
    ));
    fails.extend(same(
        GgmlType::Q5_0,
        &q5_0,
        quant::dequant_q5_0,
        b::dequant_q5_0_ref,
    ));
    fails.extend(same(
        GgmlType::Q5_1,
        &q5_1,
        quant::dequant_q5_1,
        b::dequant_q5_1_ref,
    ));
    fails.extend(same(
        GgmlType::Q8_0,
        &q8_0,
        quant::dequant_q8_0,
        b::dequant_q8_0_ref,
    ));
    // Q6_K: the fixture's real blocks, then every byte in `ql` and every byte in `qh` (so
    // every 6-bit code in every run), under `d` of both signs and scales at the extremes.
    let mut q6_k = from_fixture::<b::BlockQ6K>(GgmlType::Q6K);
    for (i, d) in [0.75f32, -3e-4, 1.5, -0.125].into_iter().enumerate() {
        q6_k.extend((0..2).map(|blk| b::BlockQ6K {
            ql: std::array::from_fn(|j| (blk * 128 + j) as u8),
            qh: std::array::from_fn(|j| (blk * 64 + j * 4 + i) as u8),
            scales: std::array::from_fn(|j| [-128i8, 127, -1, 1, 0, 64, -77, 33][(j + blk) % 8]),
            d: f16::from_f32(d),
        }));
    }
    fails.extend(same(
        GgmlType::Q6K,
        &q6_k,
        quant::dequant_q6_k,
        b::dequant_q6_k_ref,
    ));
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
