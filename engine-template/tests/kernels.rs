//! SIMD kernels against the scalar reference and an f64 oracle: every length from 0 to past
//! twice the widest unrolled step, misaligned slices, and every 16-bit float code.

// `!(err <= bound)` on purpose: a NaN result must count as a failure.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use clocher_engine::kernels::{self, reference, tol, Isa, Widen};
use half::{bf16, f16};
use proptest::prelude::*;

#[allow(dead_code)]
mod common;
use common::{dot_f64, values};

/// Widest step of the SIMD loops (4 accumulators x 8 lanes); lengths go past twice this.
const MAX_STEP: usize = 32;
const ROWS: [usize; 4] = [0, 1, 2, 5];

fn bound(n: usize, mag: f64) -> f64 {
    tol::DOT_REL as f64 * (n.max(1) as f64).sqrt() * mag + tol::DOT_ABS as f64
}

type Gemv<E> = fn(Isa, &[E], &[f32], &mut [f32]);

/// Runs one GEMV variant over all shapes and misalignments; returns every failure.
fn check_gemv<E: Copy>(
    format: &str,
    conv: fn(f32) -> E,
    widen: fn(E) -> f32,
    gemv: Gemv<E>,
) -> Vec<String> {
    let mut fails = Vec::new();
    for isa in Isa::available() {
        for cols in 0..=2 * MAX_STEP + 3 {
            for rows in ROWS {
                for mis in 0..3 {
                    let wbuf: Vec<E> = values(rows * cols + mis, (cols * 31 + rows) as u32)
                        .into_iter()
                        .map(conv)
                        .collect();
                    let xbuf = values(cols + mis, cols as u32 + 7);
                    let (w, x) = (&wbuf[mis..], &xbuf[mis..]);
                    let mut y = vec![f32::NAN; rows];
                    gemv(isa, w, x, &mut y);
                    let wf: Vec<f32> = w.iter().map(|v| widen(*v)).collect();
                    for r in 0..rows {
                        let (exp, mag) = dot_f64(&wf[r * cols..(r + 1) * cols], x);
                        let got = y[r] as f64;
                        if !((got - exp).abs() <= bound(cols, mag)) {
                            fails.push(format!(
                                "gemv_{format} isa={} rows={rows} cols={cols} misalign={mis} index={r}: expected {exp}, actual {got}",
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

fn assert_none(fails: Vec<String>) {
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

#[test]
fn gemv_f32_matches_f64_oracle() {
    assert_none(check_gemv("f32", |v| v, |v| v, kernels::gemv_f32));
}

#[test]
fn gemv_bf16_matches_f64_oracle() {
    assert_none(check_gemv(
        "bf16",
        bf16::from_f32,
        bf16::to_f32,
        kernels::gemv_bf16,
    ));
}

#[test]
fn gemv_f16_matches_f64_oracle() {
    assert_none(check_gemv(
        "f16",
        f16::from_f32,
        f16::to_f32,
        kernels::gemv_f16,
    ));
}

/// Every finite 16-bit code, widened by each ISA's GEMV: 8 passes with a one-hot `x` pick out
/// each column exactly (products with 0 and 1 are exact), so the result must equal the code's
/// value bit for bit.
fn check_all_codes<E: Copy>(
    format: &str,
    from_bits: fn(u16) -> E,
    widen: fn(E) -> f32,
    gemv: Gemv<E>,
) -> Vec<String> {
    const COLS: usize = 8;
    let codes: Vec<E> = (0..=u16::MAX)
        .map(|b| {
            if widen(from_bits(b)).is_finite() {
                from_bits(b)
            } else {
                from_bits(0)
            }
        })
        .collect();
    let rows = codes.len() / COLS;
    let mut fails = Vec::new();
    for isa in Isa::available() {
        for j in 0..COLS {
            let mut x = [0.0f32; COLS];
            x[j] = 1.0;
            let mut y = vec![0.0f32; rows];
            gemv(isa, &codes, &x, &mut y);
            for r in 0..rows {
                let exp = widen(codes[r * COLS + j]);
                if y[r].to_bits() != exp.to_bits() && !(y[r] == 0.0 && exp == 0.0) {
                    fails.push(format!(
                        "widen_{format} isa={} code index={}: expected {exp}, actual {}",
                        isa.name(),
                        r * COLS + j,
                        y[r]
                    ));
                }
            }
        }
    }
    fails
}

#[test]
fn every_bf16_code_widens_exactly() {
    assert_none(check_all_codes(
        "bf16",
        bf16::from_bits,
        bf16::to_f32,
        kernels::gemv_bf16,
    ));
}

#[test]
fn every_f16_code_widens_exactly() {
    assert_none(check_all_codes(
        "f16",
        f16::from_bits,
        f16::to_f32,
        kernels::gemv_f16,
    ));
}

/// The batched GEMM's row widening against the reference, bit for bit: every 16-bit code
/// (NaN stays NaN), and every length up to past twice the unrolled step from misaligned starts.
fn check_widen<E: Copy>(
    format: &str,
    from_bits: fn(u16) -> E,
    widen: fn(Isa, &[E], &mut [f32]),
) -> Vec<String> {
    let codes: Vec<E> = (0..=u16::MAX).map(from_bits).collect();
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let mut fails = Vec::new();
    for isa in Isa::available() {
        let mut cases = vec![(0, codes.len())];
        cases.extend((0..4).flat_map(|mis| (0..=2 * MAX_STEP + 3).map(move |n| (mis, n))));
        for (mis, n) in cases {
            let w = &codes[mis..mis + n];
            let (mut want, mut got) = (vec![0.0f32; n], vec![f32::NAN; n + 1]);
            widen(Isa::Scalar, w, &mut want);
            widen(isa, w, &mut got[1..]);
            if let Some(i) = (0..n).find(|&i| !same(want[i], got[1 + i])) {
                fails.push(format!(
                    "widen_{format} isa={} n={n} misalign={mis} index={i}: expected {}, actual {}",
                    isa.name(),
                    want[i],
                    got[1 + i]
                ));
            }
        }
    }
    fails
}

#[test]
fn widen_bf16_and_f16_match_reference() {
    assert_none(check_widen("bf16", bf16::from_bits, kernels::widen_bf16));
    assert_none(check_widen("f16", f16::from_bits, kernels::widen_f16));
}

#[test]
fn dot_matches_reference() {
    let mut fails = Vec::new();
    for isa in Isa::available() {
        for n in 0..=2 * MAX_STEP + 3 {
            for mis in 0..3 {
                let a = values(n + mis, n as u32);
                let b = values(n + mis, n as u32 + 99);
                let (a, b) = (&a[mis..], &b[mis..]);
                let (exp, mag) = dot_f64(a, b);
                let got = kernels::dot_f32(isa, a, b) as f64;
                if !((got - exp).abs() <= bound(n, mag)) {
                    fails.push(format!(
                        "dot_f32 isa={} n={n} misalign={mis}: expected {exp}, actual {got}",
                        isa.name()
                    ));
                }
                // The tiles: four rows (one of them `a`) against two or three tokens (one of
                // them `b`).
                let others: Vec<Vec<f32>> = (1..6).map(|k| values(n, (n * 7 + k) as u32)).collect();
                let ws = [a, &others[0][..], &others[1][..], &others[2][..]];
                let x3 = [&others[3][..], &others[4][..], b];
                let tiles = [
                    (
                        "dot4x2_f32",
                        kernels::dot4x2(isa, ws, [x3[0], b]).map(|r| vec![r[0], r[1]]),
                        vec![x3[0], b],
                    ),
                    (
                        "dot4x3_f32",
                        kernels::dot4x3(isa, ws, x3).map(|r| r.to_vec()),
                        x3.to_vec(),
                    ),
                ];
                for (name, out, xs) in tiles {
                    for (r, row) in out.into_iter().enumerate() {
                        for (t, got) in row.into_iter().enumerate() {
                            let (exp, mag) = dot_f64(ws[r], xs[t]);
                            if !((got as f64 - exp).abs() <= bound(n, mag)) {
                                fails.push(format!(
                                    "{name} isa={} n={n} misalign={mis} row={r} token={t}: expected {exp}, actual {got}",
                                    isa.name()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert_none(fails);
}

/// The prefill tiles on rows read in place and widened in registers (bf16, f16), against f64
/// math on the widened values: lengths around the 8-lane step, misaligned rows.
fn check_widened_tiles<E: Widen>(format: &str, from: fn(f32) -> E) -> Vec<String> {
    let mut fails = Vec::new();
    for isa in Isa::available() {
        for n in 0..=2 * MAX_STEP + 3 {
            for mis in 0..3 {
                let rows: Vec<Vec<E>> = (0..4)
                    .map(|k| {
                        values(n + mis, (n * 5 + k) as u32)
                            .into_iter()
                            .map(from)
                            .collect()
                    })
                    .collect();
                let ws: [&[E]; 4] = std::array::from_fn(|r| &rows[r][mis..]);
                let xs: Vec<Vec<f32>> =
                    (0..3).map(|k| values(n, (n * 3 + k + 50) as u32)).collect();
                let x3 = [&xs[0][..], &xs[1][..], &xs[2][..]];
                let tiles = [
                    (
                        "dot4x2",
                        kernels::dot4x2(isa, ws, [x3[0], x3[1]]).map(|r| r.to_vec()),
                    ),
                    ("dot4x3", kernels::dot4x3(isa, ws, x3).map(|r| r.to_vec())),
                ];
                for (name, out) in tiles {
                    for (r, row) in out.into_iter().enumerate() {
                        let wide: Vec<f32> = ws[r].iter().map(|w| w.to_f32()).collect();
                        for (t, got) in row.into_iter().enumerate() {
                            let (exp, mag) = dot_f64(&wide, x3[t]);
                            if !((got as f64 - exp).abs() <= bound(n, mag)) {
                                fails.push(format!(
                                    "{name} {format} isa={} n={n} misalign={mis} row={r} token={t}: expected {exp}, actual {got}",
                                    isa.name()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    fails
}

#[test]
fn tiles_on_bf16_and_f16_rows_match_f64_math() {
    assert_none(check_widened_tiles("bf16", bf16::from_f32));
    assert_none(check_widened_tiles("f16", f16::from_f32));
}

/// Attention of 1 to 4 query heads sharing one key-value head (4: a group of three, then one),
/// on f32 and f16 caches (the f16 values as stored), against f64 math: head sizes around the 8-lane and 32- and 64-float register blocks, 0 to 9
/// positions (whole groups of four keys and every remainder), the head's slice in the middle of
/// each cache row, the caches misaligned, and the positions also taken in two parts and merged.
#[test]
fn attend_matches_f64_math() {
    let mut fails = Vec::new();
    for isa in Isa::available() {
        for heads in 1..=4usize {
            for hd in [1usize, 8, 13, 32, 64, 72, 136] {
                // Past 8 and 16 positions: the softmax's vector loops and their tails.
                for n in (0..=9usize).chain([16, 17, 23]) {
                    for mis in 0..2 {
                        check_attend::<f32>(isa, heads, hd, n, mis, &mut fails);
                        check_attend::<half::f16>(isa, heads, hd, n, mis, &mut fails);
                    }
                }
            }
        }
    }
    assert_none(fails);
}

fn check_attend<T: kernels::KvElem>(
    isa: Isa,
    heads: usize,
    hd: usize,
    n: usize,
    mis: usize,
    fails: &mut Vec<String>,
) {
    let (stride, at) = (3 * hd + 1, hd + 1);
    let len = n * stride + mis;
    let cache = |seed: u32| -> Vec<T> {
        let mut c = vec![T::zeroed(); len];
        T::store(&values(len, seed), &mut c);
        c
    };
    let (k, v) = (cache((hd + n) as u32), cache((hd * n + 5) as u32));
    let (k, v) = (&k[mis..], &v[mis..]);
    // The reference reads what the cache holds.
    let k32: Vec<f32> = k.iter().map(|x| x.to_f32()).collect();
    let q: Vec<f32> = (0..heads)
        .flat_map(|h| values(hd, (hd + 7 * h) as u32 + 7))
        .collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let attend = |k: &[T], v: &[T], n: usize| {
        let (mut sc, mut out) = (vec![f32::NAN; heads * n], vec![f32::NAN; heads * hd]);
        let mut ms = vec![f32::NAN; 2 * heads];
        kernels::attend(
            isa,
            &q,
            (k, v),
            (stride, at),
            scale,
            &mut sc,
            &mut out,
            &mut ms,
        );
        (sc, out, ms)
    };
    let (sc, out, ms) = attend(k, v, n);
    // The same positions in two parts (the first or second maybe empty), merged per head.
    let cut = n / 3;
    let (_, o0, ms0) = attend(k, v, cut);
    let (_, o1, ms1) = attend(&k[cut * stride..], &v[cut * stride..], n - cut);
    let case = format!(
        "attend isa={} cache={} heads={heads} hd={hd} n={n} misalign={mis}",
        isa.name(),
        std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("?")
    );
    for h in 0..heads {
        let q = &q[h * hd..(h + 1) * hd];
        // f64 scores, softmax and weighted sum.
        let s: Vec<f64> = (0..n)
            .map(|t| dot_f64(q, &k32[t * stride + at..][..hd]).0 * scale as f64)
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let p: Vec<f64> = e.iter().map(|x| x / e.iter().sum::<f64>()).collect();
        let sum = ms[2 * h + 1];
        for (t, &exp) in p.iter().enumerate() {
            let got = sc[h * n + t] / sum;
            if !((got as f64 - exp).abs() <= tol::ELEMENTWISE_REL as f64) {
                fails.push(format!(
                    "{case} scores head={h} index={t}: expected {exp}, actual {got}"
                ));
            }
        }
        let mut merged = vec![f32::NAN; hd];
        if n > 0 {
            let part = |o: &[f32], ms: &[f32]| {
                (ms[2 * h], ms[2 * h + 1], o[h * hd..(h + 1) * hd].to_vec())
            };
            let parts = [part(&o0, &ms0), part(&o1, &ms1)];
            let parts = parts.iter().map(|(m, s, o)| (*m, *s, &o[..]));
            reference::merge_attention_ref(parts, &mut merged);
        } else if ms[2 * h + 1] != 0.0 || out[h * hd..(h + 1) * hd].iter().any(|&o| o != 0.0) {
            fails.push(format!(
                "{case} head={h}: no positions gave {:?} and a non-zero output",
                &ms[2 * h..2 * h + 2]
            ));
        }
        for i in 0..if n > 0 { hd } else { 0 } {
            let col: Vec<f64> = (0..n)
                .map(|t| v[t * stride + at + i].to_f32() as f64)
                .collect();
            let exp: f64 = col.iter().zip(&p).map(|(v, p)| v * p).sum();
            let mag: f64 = col.iter().map(|v| v.abs()).fold(0.0, f64::max);
            for (what, got) in [
                ("output", out[h * hd + i] / sum),
                ("merged output", merged[i]),
            ] {
                if !((got as f64 - exp).abs() <= bound(n, mag)) {
                    fails.push(format!(
                        "{case} {what} head={h} index={i}: expected {exp}, actual {got}"
                    ));
                }
            }
        }
    }
}

/// SwiGLU's product and RMSNorm on every ISA against f64 math: lengths past twice the lane
/// count, misaligned slices, and gates from -90 to 90 (the vector `exp` clamps its input past
/// 88).
#[test]
fn silu_mul_and_rmsnorm_every_isa_match_f64_math() {
    let mut fails = Vec::new();
    for isa in Isa::available() {
        for n in 0..=2 * 8 + 3 {
            for mis in 0..2 {
                let gate: Vec<f32> = (0..n + mis)
                    .map(|i| (i as f32 * 37.0 + n as f32 * 11.0) % 180.0 - 90.0)
                    .collect();
                let up = values(n + mis, n as u32 + 3);
                let mut got = gate[mis..].to_vec();
                kernels::silu_mul(isa, &mut got, &up[mis..]);
                // RMSNorm of the same rows (the gates as input, `up` as weights).
                let mut norm = vec![f32::NAN; n];
                kernels::rmsnorm(isa, &gate[mis..], &up[mis..], 1e-5, &mut norm);
                let ms =
                    gate[mis..].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n.max(1) as f64;
                for (i, (&g, &w)) in gate[mis..].iter().zip(&up[mis..]).enumerate() {
                    let exp = w as f64 * g as f64 / (ms + 1e-5).sqrt();
                    if !((norm[i] as f64 - exp).abs()
                        <= tol::ELEMENTWISE_REL as f64 * exp.abs().max(1.0))
                    {
                        fails.push(format!(
                            "rmsnorm isa={} n={n} misalign={mis} index={i}: expected {exp}, actual {}",
                            isa.name(),
                            norm[i]
                        ));
                    }
                }
                for (i, (&g, &u)) in gate[mis..].iter().zip(&up[mis..]).enumerate() {
                    let (g, u) = (g as f64, u as f64);
                    let exp = g / (1.0 + (-g).exp()) * u;
                    let tol = tol::ELEMENTWISE_REL as f64 * exp.abs().max(1e-3);
                    if !((got[i] as f64 - exp).abs() <= tol) {
                        fails.push(format!(
                            "silu_mul isa={} n={n} misalign={mis} index={i}: expected {exp}, actual {}",
                            isa.name(),
                            got[i]
                        ));
                    }
                }
            }
        }
    }
    assert_none(fails);
}

#[test]
fn rmsnorm_softmax_rope_silu_match_f64_math() {
    let x = values(67, 3);
    let w = values(67, 4);
    let mut out = vec![0.0; 67];
    reference::rmsnorm_ref(&x, &w, 1e-5, &mut out);
    let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 67.0;
    for i in 0..67 {
        let exp = w[i] as f64 * x[i] as f64 / (ms + 1e-5).sqrt();
        let tol = tol::ELEMENTWISE_REL as f64 * exp.abs().max(1.0);
        assert!(
            (out[i] as f64 - exp).abs() <= tol,
            "rmsnorm index={i}: expected {exp}, actual {}",
            out[i]
        );
    }

    let mut p = vec![1000.0, 1001.0, 999.0];
    let (max, sum) = reference::exp_shifted_ref(&mut p);
    assert_eq!(max, 1001.0);
    let e: Vec<f64> = [-1.0f64, 0.0, -2.0].iter().map(|v| v.exp()).collect();
    let s: f64 = e.iter().sum();
    let tol = tol::ELEMENTWISE_REL as f64;
    assert!(
        (sum as f64 - s).abs() < tol * s,
        "softmax sum: expected {s}, actual {sum}"
    );
    for i in 0..3 {
        assert!(
            (p[i] as f64 - e[i]).abs() < tol,
            "softmax index={i}: expected {}, actual {}",
            e[i],
            p[i]
        );
    }

    // RoPE at position 0 is the identity; at position 7 it rotates each (i, i + hd/2) pair.
    let (hd, heads) = (8, 2);
    let mut cos = vec![0.0; hd / 2];
    let mut sin = vec![0.0; hd / 2];
    let q = values(hd * heads, 5);
    reference::rope_cos_sin(0, 10000.0, hd, &mut cos, &mut sin);
    let mut q0 = q.clone();
    reference::rope_ref(&mut q0, &cos, &sin);
    assert_eq!(q0, q);
    reference::rope_cos_sin(7, 10000.0, hd, &mut cos, &mut sin);
    let mut q7 = q.clone();
    reference::rope_ref(&mut q7, &cos, &sin);
    for h in 0..heads {
        for i in 0..hd / 2 {
            let (a, b) = (h * hd + i, h * hd + i + hd / 2);
            let angle = 7.0f64 * 10000f64.powf(-(2.0 * i as f64) / hd as f64);
            let exp_a = q[a] as f64 * angle.cos() - q[b] as f64 * angle.sin();
            let exp_b = q[b] as f64 * angle.cos() + q[a] as f64 * angle.sin();
            assert!(
                (q7[a] as f64 - exp_a).abs() < 1e-5,
                "rope head={h} i={i}: expected {exp_a}, actual {}",
                q7[a]
            );
            assert!(
                (q7[b] as f64 - exp_b).abs() < 1e-5,
                "rope head={h} i={i}+hd/2: expected {exp_b}, actual {}",
                q7[b]
            );
        }
    }

    let mut g = vec![-2.0f32, 0.0, 3.0];
    reference::silu_mul_ref(&mut g, &[1.0, 5.0, 2.0]);
    let silu = |v: f64| v / (1.0 + (-v).exp());
    for (i, (got, exp)) in g.iter().zip([silu(-2.0), 0.0, 2.0 * silu(3.0)]).enumerate() {
        assert!(
            (*got as f64 - exp).abs() < 1e-6,
            "silu_mul index={i}: expected {exp}, actual {got}"
        );
    }
}

proptest! {
    #[test]
    fn gemv_bf16_simd_equals_reference_within_tolerance(cols in 0usize..200, rows in 0usize..6, seed in any::<u32>()) {
        let w: Vec<bf16> = values(rows * cols, seed).into_iter().map(bf16::from_f32).collect();
        let x = values(cols, seed ^ 0x5555);
        let mut want = vec![0.0; rows];
        reference::gemv_bf16_ref(&w, &x, &mut want);
        for isa in Isa::available() {
            let mut got = vec![0.0; rows];
            kernels::gemv_bf16(isa, &w, &x, &mut got);
            for r in 0..rows {
                let wf: Vec<f32> = w[r * cols..(r + 1) * cols].iter().map(|v| v.to_f32()).collect();
                let (_, mag) = dot_f64(&wf, &x);
                prop_assert!(((got[r] - want[r]) as f64).abs() <= 2.0 * bound(cols, mag),
                    "gemv_bf16 isa={} index={r}: expected {}, actual {}", isa.name(), want[r], got[r]);
            }
        }
    }
}
