//! Decode GEMVs, one thread, on SmolLM2-135M's shapes (gate/up: 1536 x 576; down: 576 x 1536)
//! and on 128 x 576, small enough to stay in L2 (what the kernel does with no memory stalls):
//! each format with f32 activations and with 8-bit ones (activation quantization included),
//! reported as weight bytes streamed per second; and prefill's batched 8-bit kernels on 64 rows
//! (one chunk of `Mat::matmul`, cache-resident) against 8 tokens, reported as weights times
//! tokens per second. `cargo bench -p clocher-engine --bench gemv`.

use clocher_engine::kernels::act8::{self, ActQ8};
use clocher_engine::kernels::blocks::GgmlType;
use clocher_engine::kernels::blocks::{self, BlockQ4K, BlockQ4_1, BlockQ5_0, BlockQ5_1};
use clocher_engine::kernels::int::{self, Clip, Scheme};
use clocher_engine::kernels::{isa, quant, rows};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::f16;
use std::hint::black_box;

#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
use common::values;

fn gemvs(c: &mut Criterion) {
    let isa = isa();
    for (rows, cols) in [(1536usize, 576usize), (576, 1536), (128, 576)] {
        let w = values(rows * cols, 1);
        let x = values(cols, 2);
        let mut y = vec![0.0f32; rows];
        let mut xq = ActQ8::default();
        let mut g = c.benchmark_group(format!("gemv {rows}x{cols} {}", isa.name()));

        let i4 = int::quantize_int4(&w, cols, 32, Scheme::Asym, Clip::None).unwrap();
        g.throughput(Throughput::Bytes(i4.len() as u64));
        g.bench_function("int4_g32 f32", |b| {
            b.iter(|| int::gemv_int4(isa, 32, black_box(&i4), &x, &mut y))
        });
        g.bench_function("int4_g32 q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                act8::gemv_int4_q8(isa, 32, &i4, &xq, &mut y)
            })
        });

        let mut lanes = i4.clone();
        int::int4_to_lanes(&mut lanes, cols);
        g.bench_function("int4_g32 lanes q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                xq.fill_lanes();
                act8::gemm_int4_lanes_q8(isa, black_box(&lanes), std::slice::from_ref(&xq), &mut y)
            })
        });

        let i8 = int::quantize_int8(&w, cols, false, Scheme::Asym, Clip::None).unwrap();
        g.throughput(Throughput::Bytes(i8.len() as u64));
        g.bench_function("int8 f32", |b| {
            b.iter(|| int::gemv_int8(isa, black_box(&i8), &x, &mut y))
        });
        g.bench_function("int8 q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                act8::gemv_int8_q8(isa, &i8, &xq, &mut y)
            })
        });

        let q80 = blocks::quantize_q8_0_ref(&w);
        g.throughput(Throughput::Bytes(std::mem::size_of_val(&q80[..]) as u64));
        g.bench_function("q8_0 f32", |b| {
            b.iter(|| quant::gemv_q8_0(isa, black_box(&q80), &x, &mut y))
        });
        g.bench_function("q8_0 q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                act8::gemv_q8_0_q8(isa, &q80, &xq, &mut y)
            })
        });

        let q41: Vec<BlockQ4_1> = (0..rows * cols / 32)
            .map(|i| BlockQ4_1 {
                d: f16::from_f32(0.01),
                m: f16::from_f32(-0.08),
                qs: std::array::from_fn(|j| (i * 37 + j * 11) as u8),
            })
            .collect();
        g.throughput(Throughput::Bytes(std::mem::size_of_val(&q41[..]) as u64));
        g.bench_function("q4_1 f32", |b| {
            b.iter(|| quant::gemv_q4_1(isa, black_box(&q41), &x, &mut y))
        });
        g.bench_function("q4_1 q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                act8::gemv_q4_1_q8(isa, &q41, &xq, &mut y)
            })
        });
        // As the packer stores a GGUF Q4_1 tensor: split rows, the lane layout.
        let mut q41r = vec![0u8; std::mem::size_of_val(&q41[..])];
        rows::split_rows(
            GgmlType::Q4_1,
            cols / 32,
            true,
            bytemuck::cast_slice(&q41),
            &mut q41r,
        );
        g.bench_function("q4_1 rows lanes q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                xq.fill_lanes();
                let xs = std::slice::from_ref(&xq);
                act8::gemm_split_q8(isa, GgmlType::Q4_1, true, black_box(&q41r), xs, &mut y)
            })
        });

        // Q5_0 (most of Q4_K_M at this width) and Q5_1 (int4w's embedding and head).
        let q50: Vec<BlockQ5_0> = (0..rows * cols / 32)
            .map(|i| BlockQ5_0 {
                d: f16::from_f32(0.01),
                qh: ((i as u32).wrapping_mul(0x9E37_79B9)).to_le_bytes(),
                qs: std::array::from_fn(|j| (i * 37 + j * 11) as u8),
            })
            .collect();
        g.throughput(Throughput::Bytes(std::mem::size_of_val(&q50[..]) as u64));
        g.bench_function("q5_0 q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                act8::gemv_q5_0_q8(isa, &q50, &xq, &mut y)
            })
        });
        let split = |t: GgmlType, blocks: &[u8]| {
            let mut out = vec![0u8; blocks.len()];
            rows::split_rows(t, cols / 32, false, blocks, &mut out);
            out
        };
        let q50r = split(GgmlType::Q5_0, bytemuck::cast_slice(&q50));
        g.bench_function("q5_0 rows q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                let xs = std::slice::from_ref(&xq);
                act8::gemm_split_q8(isa, GgmlType::Q5_0, false, &q50r, xs, &mut y)
            })
        });
        let q51: Vec<BlockQ5_1> = q50
            .iter()
            .map(|b| BlockQ5_1 {
                d: b.d,
                m: f16::from_f32(-0.16),
                qh: b.qh,
                qs: b.qs,
            })
            .collect();
        g.throughput(Throughput::Bytes(std::mem::size_of_val(&q51[..]) as u64));
        g.bench_function("q5_1 q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                act8::gemv_q5_1_q8(isa, &q51, &xq, &mut y)
            })
        });
        let q51r = split(GgmlType::Q5_1, bytemuck::cast_slice(&q51));
        g.bench_function("q5_1 rows q8", |b| {
            b.iter(|| {
                xq.quantize(isa, black_box(&x));
                let xs = std::slice::from_ref(&xq);
                act8::gemm_split_q8(isa, GgmlType::Q5_1, false, &q51r, xs, &mut y)
            })
        });
        // Q4_K (Q4_K_M's down projections), rows of whole 256-weight blocks only.
        if cols.is_multiple_of(blocks::QK_K) {
            let q4k: Vec<BlockQ4K> = (0..rows * cols / blocks::QK_K)
                .map(|i| BlockQ4K {
                    d: f16::from_f32(0.01),
                    dmin: f16::from_f32(0.02),
                    scales: std::array::from_fn(|j| (i * 29 + j * 13) as u8),
                    qs: std::array::from_fn(|j| (i * 37 + j * 11) as u8),
                })
                .collect();
            g.throughput(Throughput::Bytes(std::mem::size_of_val(&q4k[..]) as u64));
            g.bench_function("q4_k q8", |b| {
                b.iter(|| {
                    xq.quantize(isa, black_box(&x));
                    act8::gemv_q4_k_q8(isa, &q4k, &xq, &mut y)
                })
            });
        }
        g.finish();
    }
}

fn gemms(c: &mut Criterion) {
    let (isa, rows, tokens) = (isa(), 64usize, 8usize);
    for cols in [576usize, 1536] {
        let w = values(rows * cols, 1);
        let xs: Vec<ActQ8> = (0..tokens)
            .map(|i| {
                let mut q = ActQ8::default();
                q.quantize(isa, &values(cols, 2 + i as u32));
                q
            })
            .collect();
        let mut y = vec![0.0f32; rows * tokens];
        let mut g = c.benchmark_group(format!("gemm {rows}x{cols} x{tokens} {}", isa.name()));
        g.throughput(Throughput::Elements((rows * cols * tokens) as u64));
        let i4 = int::quantize_int4(&w, cols, 32, Scheme::Asym, Clip::None).unwrap();
        g.bench_function("int4_g32 q8", |b| {
            b.iter(|| act8::gemm_int4_q8(isa, 32, black_box(&i4), &xs, &mut y))
        });
        let q80 = blocks::quantize_q8_0_ref(&w);
        g.bench_function("q8_0 q8", |b| {
            b.iter(|| act8::gemm_q8_0_q8(isa, black_box(&q80), &xs, &mut y))
        });
        g.finish();
    }
}

criterion_group!(benches, gemvs, gemms);
criterion_main!(benches);
