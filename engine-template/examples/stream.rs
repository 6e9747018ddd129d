//! One thread's decode GEMV streamed from memory, against a plain read of as many bytes: the
//! share of the thread's read bandwidth a kernel reaches on a shape (ADR 47). The criterion
//! benches (`benches/gemv.rs`) keep their matrices in cache; this one walks 128 MiB of copies
//! of one matrix, as decode walks a model's layers.
//!
//! `cargo run --release -p clocher-engine --example stream`, with `FMT=q4_1` (split rows in
//! the lane layout, as the packer stores GGUF Q4_1; the default), `q8_0`, `q5_1` (split
//! rows), `int4` (int4 g32 in the lane layout) or `bf16` (f32 activations); `COLS=` (576) and
//! `MROWS=` (1536) for the shape (`COLS=1536 MROWS=576` is the down projection's); `HOT=1` to read one copy over and over
//! (cache-resident; with a matrix that fits L2, e.g. `MROWS=256`, it times the kernel's
//! arithmetic alone).

use clocher_engine::kernels::act8::{self, ActQ8};
use clocher_engine::kernels::blocks::{self, BlockQ4_1, BlockQ5_1, GgmlType};
use clocher_engine::kernels::int::{self, Clip, Scheme};
use clocher_engine::kernels::{self, isa, rows};
use half::f16;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let isa = isa();
    let (cols, mrows) = (env("COLS", 576), env("MROWS", 1536));
    let fmt = std::env::var("FMT").unwrap_or_else(|_| "q4_1".into());
    let q8 = fmt == "q8_0";
    let hot = std::env::var("HOT").is_ok_and(|v| v == "1");
    if !["q4_1", "q8_0", "q5_1", "int4", "bf16"].contains(&fmt.as_str()) {
        eprintln!("stream: FMT={fmt}: not one of q4_1, q8_0, q5_1, int4, bf16");
        std::process::exit(2);
    }
    let total = 128usize << 20;
    let mut one = vec![0u8; mrows * cols / 32 * if q8 { 34 } else { 20 }];
    if fmt == "bf16" {
        let v: Vec<half::bf16> = (0..mrows * cols)
            .map(|i| half::bf16::from_f32((i * 7 % 255) as f32 - 127.0))
            .collect();
        one = bytemuck::cast_slice(&v).to_vec();
    } else if fmt == "int4" {
        let v: Vec<f32> = (0..mrows * cols)
            .map(|i| (i * 7 % 255) as f32 - 127.0)
            .collect();
        one = int::quantize_int4(&v, cols, 32, Scheme::Asym, Clip::None).unwrap();
        int::int4_to_lanes(&mut one, cols);
    } else if fmt == "q5_1" {
        let q51: Vec<BlockQ5_1> = (0..mrows * cols / 32)
            .map(|i| BlockQ5_1 {
                d: f16::from_f32(0.01),
                m: f16::from_f32(-0.16),
                qh: ((i as u32).wrapping_mul(0x9E37_79B9)).to_le_bytes(),
                qs: std::array::from_fn(|j| (i * 37 + j * 11) as u8),
            })
            .collect();
        one = vec![0u8; std::mem::size_of_val(&q51[..])];
        rows::split_rows(
            GgmlType::Q5_1,
            cols / 32,
            false,
            bytemuck::cast_slice(&q51),
            &mut one,
        );
    } else if q8 {
        let v: Vec<f32> = (0..mrows * cols)
            .map(|i| (i * 7 % 255) as f32 - 127.0)
            .collect();
        one.copy_from_slice(bytemuck::cast_slice(&blocks::quantize_q8_0_ref(&v)));
    } else {
        let q41: Vec<BlockQ4_1> = (0..mrows * cols / 32)
            .map(|i| BlockQ4_1 {
                d: f16::from_f32(0.01),
                m: f16::from_f32(-0.08),
                qs: std::array::from_fn(|j| (i * 37 + j * 11) as u8),
            })
            .collect();
        rows::split_rows(
            GgmlType::Q4_1,
            cols / 32,
            true,
            bytemuck::cast_slice(&q41),
            &mut one,
        );
    }
    let w = one.repeat((total / one.len()).max(1));
    let x: Vec<f32> = (0..cols).map(|i| (i * 7 % 13) as f32 - 6.0).collect();
    let plain = vec![1.0f32; w.len() / 4];
    let (mut xq, mut y) = (ActQ8::default(), vec![0.0f32; mrows]);
    for round in 0..5 {
        let t0 = Instant::now();
        // 16 independent lanes, as `bench`'s probe reads.
        let mut acc = [0.0f32; 16];
        for c in plain.chunks_exact(16) {
            for (s, v) in acc.iter_mut().zip(c) {
                *s += v;
            }
        }
        std::hint::black_box(&acc);
        let read = w.len() as f64 / t0.elapsed().as_secs_f64() / 1e9;
        let t0 = Instant::now();
        for m in w.chunks_exact(one.len()) {
            let m = if hot { &one[..] } else { m };
            if fmt != "bf16" {
                xq.quantize(isa, std::hint::black_box(&x));
            }
            if fmt == "bf16" {
                kernels::gemv_bf16(isa, bytemuck::cast_slice(m), &x, &mut y);
            } else if q8 {
                act8::gemv_q8_0_q8(isa, bytemuck::cast_slice(m), &xq, &mut y);
            } else if fmt == "int4" {
                xq.fill_lanes();
                act8::gemm_int4_lanes_q8(isa, m, std::slice::from_ref(&xq), &mut y);
            } else if fmt == "q5_1" {
                let xs = std::slice::from_ref(&xq);
                act8::gemm_split_q8(isa, GgmlType::Q5_1, false, m, xs, &mut y);
            } else {
                xq.fill_lanes();
                let xs = std::slice::from_ref(&xq);
                act8::gemm_split_q8(isa, GgmlType::Q4_1, true, m, xs, &mut y);
            }
        }
        std::hint::black_box(&y);
        let gemv = w.len() as f64 / t0.elapsed().as_secs_f64() / 1e9;
        let pct = gemv / read * 100.0;
        println!("round {round}: read {read:.1} GB/s, gemv {gemv:.1} GB/s, {pct:.0}%");
    }
}
