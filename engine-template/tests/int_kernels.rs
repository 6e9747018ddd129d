//! Clocher's int8 / int4 formats: quantize-dequantize round trips (RMSE bounds per scheme, every
//! nibble and byte code, zero and constant rows, clipping) and every fused GEMV against an f64
//! dot of the dequantized weights, on every ISA, for many lengths and misaligned slices.

// `!(err <= bound)` on purpose: a NaN result must count as a failure.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use clocher_engine::kernels::int::{self, Clip, Scheme};
use clocher_engine::kernels::{tol, Isa};
use half::bf16;

#[allow(dead_code)]
mod common;
use common::values;

/// Round-trip RMSE over the standard deviation, for uniform values: a uniform quantizer of
/// `L` steps over the range gives exactly `1 / L` (RMSE = step / sqrt(12), std = range /
/// sqrt(12)). The bounds allow 10% over that for the 8-bit coding of int4 group scales and
/// for ranges that don't fill the codes exactly. Sym int4 uses 14 steps (codes 1..=15).
const RMSE_INT8: f64 = 1.1 / 255.0;
const RMSE_INT4_ASYM: f64 = 1.1 / 15.0;
const RMSE_INT4_SYM: f64 = 1.1 / 14.0;

fn dequant(bits: u8, group: usize, cols: usize, q: &[u8]) -> Vec<f32> {
    let rb = if bits == 8 {
        int::int8_row_bytes(cols)
    } else {
        int::int4_row_bytes(cols, group)
    };
    let mut out = vec![0.0f32; q.len() / rb * cols];
    if bits == 8 {
        int::dequant_int8_ref(cols, q, &mut out);
    } else {
        int::dequant_int4_ref(group, cols, q, &mut out);
    }
    out
}

fn rmse_over_std(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let mean = a.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = a.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / n;
    (mse / var).sqrt()
}

#[test]
fn round_trip_rmse_per_scheme() {
    let cols = 256;
    let w = values(cols * 8, 11);
    let mut fails = vec![];
    let mut case = |label: String, q: Vec<u8>, bits: u8, group: usize, bound: f64| {
        let r = rmse_over_std(&w, &dequant(bits, group, cols, &q));
        if !(r <= bound) {
            fails.push(format!("{label}: rmse/std {r:.5} > {bound}"));
        }
    };
    for (scheme, b4) in [(Scheme::Asym, RMSE_INT4_ASYM), (Scheme::Sym, RMSE_INT4_SYM)] {
        for clip in [Clip::None, Clip::Mse, Clip::Percentile(99.9)] {
            let q = int::quantize_int8(&w, cols, false, scheme, clip).unwrap();
            case(format!("int8 row {scheme:?} {clip}"), q, 8, 0, RMSE_INT8);
            let q = int::quantize_int8(&w, cols, true, scheme, clip).unwrap();
            case(format!("int8 tensor {scheme:?} {clip}"), q, 8, 0, RMSE_INT8);
            for group in [32, 64, 128, 256] {
                let q = int::quantize_int4(&w, cols, group, scheme, clip).unwrap();
                case(format!("int4 g{group} {scheme:?} {clip}"), q, 4, group, b4);
            }
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Weights on an asym grid (`m + d q`) come back on it: all 16 nibble codes are stored as
/// themselves, and values agree to the f16 rounding of the row scales.
#[test]
fn int4_keeps_all_16_codes() {
    for group in [32, 64, 128] {
        let cols = 2 * group;
        let (d, m) = (0.03125f32, -0.25f32);
        let codes: Vec<u8> = (0..cols).map(|i| (i * 7 % 16) as u8).collect();
        let w: Vec<f32> = codes.iter().map(|&q| m + d * q as f32).collect();
        let q = int::quantize_int4(&w, cols, group, Scheme::Asym, Clip::None).unwrap();
        let ng = cols / group;
        let qs = &q[int::int4_qs_offset(ng)..];
        for (i, &want) in codes.iter().enumerate() {
            let (g, j) = (i / group, i % group);
            let byte = qs[g * group / 2 + j % (group / 2)];
            let got = if j < group / 2 { byte & 15 } else { byte >> 4 };
            assert_eq!(
                got, want,
                "int4 g{group}: weight {i} stored as code {got}, expected {want}"
            );
        }
        let back = dequant(4, group, cols, &q);
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            assert!(
                (a - b).abs() <= 2e-3 * a.abs().max(d),
                "int4 g{group} index {i}: expected {a}, actual {b}"
            );
        }
    }
}

/// Every byte code survives an int8 round trip.
#[test]
fn int8_keeps_all_256_codes() {
    let (d, m) = (0.015625f32, -2.0f32);
    let w: Vec<f32> = (0..256).map(|q| m + d * q as f32).collect();
    let q = int::quantize_int8(&w, 256, false, Scheme::Asym, Clip::None).unwrap();
    for (i, &code) in q[int::INT8_HEADER..].iter().enumerate() {
        assert_eq!(code as usize, i, "int8 weight {i} stored as code {code}");
    }
    let back = dequant(8, 0, 256, &q);
    for (i, (a, b)) in w.iter().zip(&back).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "int8 index {i}: expected {a}, actual {b}"
        );
    }
}

#[test]
fn zero_and_constant_rows() {
    let cols = 64;
    for c in [0.0f32, 0.75, -1.5, 3e-3] {
        let w = vec![c; cols * 2];
        for scheme in [Scheme::Asym, Scheme::Sym] {
            for clip in [Clip::None, Clip::Mse, Clip::Percentile(99.0)] {
                let q8 = int::quantize_int8(&w, cols, false, scheme, clip).unwrap();
                let q4 = int::quantize_int4(&w, cols, 32, scheme, clip).unwrap();
                for (bits, q, rel) in [(8u8, q8, 1e-6f32), (4, q4, 2e-3)] {
                    let back = dequant(bits, 32, cols, &q);
                    for (i, b) in back.iter().enumerate() {
                        assert!(
                            (b - c).abs() <= rel * c.abs() && b.is_finite(),
                            "int{bits} {scheme:?} {clip} constant row {c}: index {i} is {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn clipping_limits_outliers() {
    let cols = 256;
    let mut w = values(cols, 5);
    w[17] = 100.0;
    let plain = int::quantize_int8(&w, cols, false, Scheme::Asym, Clip::None).unwrap();
    let clipped =
        int::quantize_int8(&w, cols, false, Scheme::Asym, Clip::Percentile(99.0)).unwrap();
    // RMSE over every weight but the outlier.
    let err = |q: &[u8]| {
        let back = dequant(8, 0, cols, q);
        let (mut a, mut b) = (w.clone(), back);
        a.remove(17);
        b.remove(17);
        rmse_over_std(&a, &b)
    };
    assert!(
        err(&clipped) < err(&plain) / 5.0,
        "percentile clipping should shrink the step: {} vs {}",
        err(&clipped),
        err(&plain)
    );
}

#[test]
fn bad_values_and_groups_are_errors() {
    let w = vec![1.0, f32::NAN, 0.0, 0.0];
    assert!(int::quantize_int8(&w, 4, false, Scheme::Asym, Clip::None).is_err());
    let w = vec![0.5f32; 96];
    let e = int::quantize_int4(&w, 96, 64, Scheme::Asym, Clip::None).unwrap_err();
    assert!(e.contains("does not divide"), "{e}");
    let e = int::quantize_int4(&w, 96, 48, Scheme::Asym, Clip::None).unwrap_err();
    assert!(e.contains("multiple of 32"), "{e}");
    assert!("percentile:20".parse::<Clip>().is_err());
    assert!("median".parse::<Clip>().is_err());
    assert_eq!(
        "percentile:99.5".parse::<Clip>(),
        Ok(Clip::Percentile(99.5))
    );
}

/// `(oracle, magnitude)`: the f64 dot of the dequantized row with `x`, and the sum of
/// `|step q x| + |offset x|` that the fused kernels' rounding scales with.
fn oracle(deq: &[f32], offsets: &[f32], x: &[f32]) -> (f64, f64) {
    let mut dot = 0.0;
    let mut mag = 0.0;
    for ((w, o), x) in deq.iter().zip(offsets).zip(x) {
        dot += *w as f64 * *x as f64;
        mag += ((*w - *o) as f64 * *x as f64).abs() + (*o as f64 * *x as f64).abs();
    }
    (dot, mag)
}

type Kernel = Box<dyn Fn(Isa, &[u8], &[f32], &mut [f32])>;

/// Runs `kernel` on every ISA for `rows` rows of `cols`, with the weights and activations at
/// byte / element offsets 0..3; returns every failure.
fn check(
    label: &str,
    cols: usize,
    rows: usize,
    q: &[u8],
    deq: &[f32],
    offsets: &[f32],
    kernel: &Kernel,
) -> Vec<String> {
    let mut fails = vec![];
    for isa in Isa::available() {
        for mis in 0..3 {
            let mut wbuf = vec![0u8; mis];
            wbuf.extend_from_slice(q);
            let xbuf = values(cols + mis, (cols * 3 + rows) as u32);
            let x = &xbuf[mis..];
            let mut y = vec![f32::NAN; rows];
            kernel(isa, &wbuf[mis..], x, &mut y);
            for (r, &yr) in y.iter().enumerate() {
                let row = r * cols..(r + 1) * cols;
                let (exp, mag) = oracle(&deq[row.clone()], &offsets[row], x);
                let bound = tol::QUANT_DOT_REL as f64 * (cols.max(1) as f64).sqrt() * mag
                    + tol::DOT_ABS as f64;
                let got = yr as f64;
                if !((got - exp).abs() <= bound) {
                    fails.push(format!(
                        "{label} isa={} cols={cols} rows={rows} misalign={mis} index={r}: expected {exp}, actual {got} (bound {bound:e})",
                        isa.name()
                    ));
                }
            }
        }
    }
    fails
}

/// Per-weight offsets (`m`, or `-dmin * mins[g]`) of quantized rows, for the error bound.
fn offsets(bits: u8, group: usize, cols: usize, q: &[u8]) -> Vec<f32> {
    let rb = if bits == 8 {
        int::int8_row_bytes(cols)
    } else {
        int::int4_row_bytes(cols, group)
    };
    let mut out = vec![];
    for row in q.chunks_exact(rb) {
        if bits == 8 {
            let m = f32::from_le_bytes(row[4..8].try_into().unwrap());
            out.extend(std::iter::repeat_n(m, cols));
        } else {
            let dmin = bf16::from_le_bytes([row[2], row[3]]).to_f32();
            let ng = cols / group;
            for g in 0..ng {
                let off = -dmin * row[int::INT4_HEADER + ng + g] as f32;
                out.extend(std::iter::repeat_n(off, group));
            }
        }
    }
    out
}

#[test]
fn gemv_int8_every_isa_matches_f64_oracle() {
    let mut fails = vec![];
    let kernel: Kernel = Box::new(int::gemv_int8);
    for cols in [
        0usize, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 129,
    ] {
        for rows in [0usize, 1, 3, 17] {
            for scheme in [Scheme::Asym, Scheme::Sym] {
                let w = values(rows * cols, (cols + 7 * rows) as u32);
                let q = if cols == 0 {
                    // Rows of no weights still carry their scales.
                    vec![0u8; rows * int::INT8_HEADER]
                } else {
                    int::quantize_int8(&w, cols, false, scheme, Clip::None).unwrap()
                };
                let deq = dequant(8, 0, cols, &q);
                let off = offsets(8, 0, cols, &q);
                fails.extend(check("gemv_int8", cols, rows, &q, &deq, &off, &kernel));
            }
        }
    }
    // All 256 codes in one row.
    let w: Vec<f32> = (0..256).map(|q| -1.0 + q as f32 / 128.0).collect();
    let q = int::quantize_int8(&w, 256, false, Scheme::Asym, Clip::None).unwrap();
    let (deq, off) = (dequant(8, 0, 256, &q), offsets(8, 0, 256, &q));
    fails.extend(check(
        "gemv_int8 all codes",
        256,
        1,
        &q,
        &deq,
        &off,
        &kernel,
    ));
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn gemv_int4_every_isa_matches_f64_oracle() {
    let mut fails = vec![];
    for group in [32usize, 64, 128] {
        let kernel: Kernel = Box::new(move |isa, w, x, y| int::gemv_int4(isa, group, w, x, y));
        for ngroups in [1usize, 2, 3] {
            let cols = group * ngroups;
            for rows in [0usize, 1, 3, 17] {
                for scheme in [Scheme::Asym, Scheme::Sym] {
                    let w = values(rows * cols, (cols + 5 * rows) as u32);
                    let q = int::quantize_int4(&w, cols, group, scheme, Clip::None).unwrap();
                    let deq = dequant(4, group, cols, &q);
                    let off = offsets(4, group, cols, &q);
                    let label = format!("gemv_int4_g{group} {scheme:?}");
                    fails.extend(check(&label, cols, rows, &q, &deq, &off, &kernel));
                }
            }
        }
        // All 16 codes in every group: weights on the grid.
        let cols = group * 2;
        let w: Vec<f32> = (0..cols).map(|i| -0.5 + 0.0625 * (i % 16) as f32).collect();
        let q = int::quantize_int4(&w, cols, group, Scheme::Asym, Clip::None).unwrap();
        let (deq, off) = (dequant(4, group, cols, &q), offsets(4, group, cols, &q));
        let label = format!("gemv_int4_g{group} all codes");
        fails.extend(check(&label, cols, 1, &q, &deq, &off, &kernel));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn dequant_int8_every_isa_matches_reference() {
    for cols in [1usize, 7, 8, 9, 64, 100] {
        let w = values(cols * 3, cols as u32);
        let q = int::quantize_int8(&w, cols, false, Scheme::Asym, Clip::None).unwrap();
        let want = dequant(8, 0, cols, &q);
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; want.len()];
            int::dequant_int8(isa, cols, &q, &mut got);
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= tol::ELEMENTWISE_REL * a.abs().max(1e-3),
                    "dequant_int8 cols={cols} isa={} index {i}: expected {a}, actual {b}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn dequant_int4_every_isa_matches_reference() {
    for group in [32usize, 64, 128] {
        let cols = group * 3;
        let w = values(cols * 5, group as u32);
        let q = int::quantize_int4(&w, cols, group, Scheme::Asym, Clip::None).unwrap();
        let want = dequant(4, group, cols, &q);
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; want.len()];
            int::dequant_int4(isa, group, cols, &q, &mut got);
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= tol::ELEMENTWISE_REL * a.abs().max(1e-3),
                    "dequant_int4 g{group} isa={} index {i}: expected {a}, actual {b}",
                    isa.name()
                );
            }
        }
    }
}
