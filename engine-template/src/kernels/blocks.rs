//! GGUF block formats the packer reads (dequantized to floats in this release; native kernels
//! come with the GGUF issue). Layouts and names follow ggml's `ggml-common.h`.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per block of Q4_0, Q4_1 and Q8_0.
pub const QK: usize = 32;

/// Q4_0: 4.5 bits per weight. `d` scale, then 32 nibbles: element `j` is the low nibble of
/// `qs[j]` for `j < 16`, the high nibble of `qs[j - 16]` otherwise; value = `d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Q4_1: 5 bits per weight. Scale `d` and minimum `m`, then nibbles ordered as in Q4_0;
/// value = `d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Q8_0: 8.5 bits per weight. Scale `d`, then 32 signed bytes in order; value = `d * q`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

pub fn dequant_q4_0_ref(blocks: &[BlockQ4_0], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_q4_0_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            o[j] = d * ((b.qs[j] & 0x0f) as i32 - 8) as f32;
            o[j + QK / 2] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}

pub fn dequant_q4_1_ref(blocks: &[BlockQ4_1], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_q4_1_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            o[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            o[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q8_0_ref`: `d = max|x| / 127` per block, codes `round(x / d)`.
/// `x.len()` must be a whole number of blocks.
pub fn quantize_q8_0_ref(x: &[f32]) -> Vec<BlockQ8_0> {
    assert!(
        x.len().is_multiple_of(QK),
        "quantize_q8_0_ref: partial block"
    );
    x.chunks_exact(QK)
        .map(|b| {
            let amax = b.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            BlockQ8_0 {
                d: f16::from_f32(d),
                qs: std::array::from_fn(|i| (b[i] * id).round() as i8),
            }
        })
        .collect()
}

pub fn dequant_q8_0_ref(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_q8_0_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, q) in o.iter_mut().zip(b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Elements per super-block of the k-quants (Q3_K .. Q6_K) and the ternary formats.
pub const QK_K: usize = 256;

/// Q5_0: 5.5 bits per weight. `d` scale, `qh` the 32 fifth bits (little-endian u32, bit `j` for
/// element `j`), then nibbles ordered as in Q4_0; value = `d * (q - 16)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Q5_1: 6 bits per weight. Scale `d`, minimum `m`, fifth bits `qh` and nibbles as in Q5_0;
/// value = `d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Q3_K: 3.4375 bits per weight. 256 elements in 16 groups of 16, each with a 6-bit scale
/// (packed into `scales`, offset 32). For each half of 128 elements, 4 passes (2-bit shifts of
/// `qs[32 * half..][..32]`) of 32 elements; the high bit (set means no `-4`) is bit
/// `4 * half + pass` of `hmask[l]`; value = `d * (scale - 32) * (q - 4 * !high)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// Q4_K: 4.5 bits per weight. 256 elements in 8 groups of 32 with 6-bit scale and min
/// ([`get_scale_min_k4`]); each 32 bytes of `qs` hold two groups (low nibbles, then high);
/// value = `d * scale * q - dmin * min`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// Q5_K: 5.5 bits per weight. As Q4_K, with the fifth bit of element `l` of group `g` in bit
/// `g` of `qh[l]`; value = `d * scale * q - dmin * min`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// Q6_K: 6.5625 bits per weight. 256 elements in 16 groups of 16 with signed 8-bit scales;
/// per half of 128 elements, low nibbles in `ql[64 * half..]`, 2 high bits in `qh[32 * half..]`;
/// value = `d * scale * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// IQ4_NL: 4.5 bits per weight. `d` scale, then nibbles ordered as in Q4_0 that index the
/// non-linear table [`KVALUES_IQ4NL`]; value = `d * kvalues[q]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

/// TQ1_0: 1.6875 bits per weight. Ternary digits packed 5 per byte (`qs`, base 3, most
/// significant digit first, as a fixed-point fraction) and 4 per byte (`qh`); the first 32 bytes
/// of `qs` give 5 runs of 32 elements, the last 16 give 5 runs of 16, then `qh` gives 4 runs of
/// 4; value = `d * (t - 1)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockTQ1_0 {
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    pub qh: [u8; QK_K / 64],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);

/// TQ2_0: 2.0625 bits per weight. 2-bit values; each 32 bytes of `qs` give 4 runs of 32
/// elements (shifts 0, 2, 4, 6); value = `d * (q - 1)`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockTQ2_0 {
    pub qs: [u8; QK_K / 4],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);

/// MXFP4: 4.25 bits per weight. E8M0 shared exponent `e`, then E2M1 nibbles ordered as in Q4_0;
/// value = `2^(e - 128) * KVALUES_MXFP4[q]` (the table holds doubled E2M1 values).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockMXFP4 {
    pub e: u8,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);

/// ggml's `kvalues_iq4nl`.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `kvalues_mxfp4`: E2M1 values times two.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `ggml_e8m0_to_fp32_half`: `2^(x - 128)`, half the E8M0 scale (pairs with
/// [`KVALUES_MXFP4`]); subnormal for `x < 2`.
#[inline]
pub fn e8m0_to_f32_half(x: u8) -> f32 {
    let bits = if x < 2 {
        0x0020_0000u32 << x
    } else {
        ((x - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of group `j` (0..8) of Q4_K/Q5_K.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub fn dequant_q5_0_ref(blocks: &[BlockQ5_0], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_q5_0_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((b.qs[j] & 0x0f) as u32 | xh0) as i32 - 16;
            let x1 = ((b.qs[j] >> 4) as u32 | xh1) as i32 - 16;
            o[j] = x0 as f32 * d;
            o[j + QK / 2] = x1 as f32 * d;
        }
    }
}

pub fn dequant_q5_1_ref(blocks: &[BlockQ5_1], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_q5_1_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = (b.qs[j] & 0x0f) as u32 | xh0;
            let x1 = (b.qs[j] >> 4) as u32 | xh1;
            o[j] = x0 as f32 * d + m;
            o[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`, codes
/// `(x - min) / d + 0.5` (truncated). `x.len()` must be a whole number of blocks. (A
/// least-squares search over `d` and `m`, as ggml's k-quants do, measured worse on SmolLM2's
/// head: perplexity +2.0% over fp32 against +1.2%, as it clips the outliers.)
pub fn quantize_q5_1_ref(x: &[f32]) -> Vec<BlockQ5_1> {
    assert!(
        x.len().is_multiple_of(QK),
        "quantize_q5_1_ref: partial block"
    );
    x.chunks_exact(QK)
        .map(|b| {
            let (min, max) = b
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: [u8; QK] = std::array::from_fn(|j| ((b[j] - min) * id + 0.5) as u8);
            // Low nibbles ordered as in Q4_0, fifth bits into `qh` (bit `j` for element `j`).
            let mut qh = 0u32;
            let qs = std::array::from_fn(|j| {
                let (lo, hi) = (q[j], q[j + QK / 2]);
                qh |= (lo as u32 >> 4) << j | (hi as u32 >> 4) << (j + QK / 2);
                (lo & 0x0f) | (hi & 0x0f) << 4
            });
            BlockQ5_1 {
                d: f16::from_f32(d),
                m: f16::from_f32(min),
                qh: qh.to_le_bytes(),
                qs,
            }
        })
        .collect()
}

pub fn dequant_q3_k_ref(blocks: &[BlockQ3K], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK_K,
        "dequant_q3_k_ref: length mismatch"
    );
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d_all = b.d.to_f32();
        let word = |i: usize| u32::from_le_bytes(b.scales[4 * i..4 * i + 4].try_into().unwrap());
        let (a0, a1, tmp) = (word(0), word(1), word(2));
        let aux = [
            (a0 & KMASK2) | ((tmp & KMASK1) << 4),
            (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
        ];
        let mut scales = [0i8; 16];
        for (s, w) in scales.chunks_exact_mut(4).zip(aux) {
            for (s, byte) in s.iter_mut().zip(w.to_le_bytes()) {
                *s = byte as i8;
            }
        }
        let mut is = 0;
        let mut m = 1u8;
        let mut y = 0;
        for n in 0..QK_K / 128 {
            let q = &b.qs[32 * n..32 * n + 32];
            for shift in [0, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    let group = 16 * half..16 * half + 16;
                    for (&q, &h) in q[group.clone()].iter().zip(&b.hmask[group]) {
                        let low = ((q >> shift) & 3) as i32;
                        let sub = if h & m != 0 { 0 } else { 4 };
                        o[y] = dl * (low - sub) as f32;
                        y += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

pub fn dequant_q4_k_ref(blocks: &[BlockQ4K], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK_K,
        "dequant_q4_k_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (j, (q, o)) in
            b.qs.chunks_exact(32)
                .zip(o.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * j, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * j + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub fn dequant_q5_k_ref(blocks: &[BlockQ5K], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK_K,
        "dequant_q5_k_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (j, (ql, o)) in
            b.qs.chunks_exact(32)
                .zip(o.chunks_exact_mut(64))
                .enumerate()
        {
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let (sc, m) = get_scale_min_k4(2 * j, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * j + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                o[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
                o[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

pub fn dequant_q6_k_ref(blocks: &[BlockQ6K], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK_K,
        "dequant_q6_k_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (n, o) in o.chunks_exact_mut(128).enumerate() {
            let ql = &b.ql[64 * n..64 * n + 64];
            let qh = &b.qh[32 * n..32 * n + 32];
            let sc = &b.scales[8 * n..8 * n + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                o[l] = d * sc[is] as f32 * q1 as f32;
                o[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                o[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                o[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

pub fn dequant_iq4_nl_ref(blocks: &[BlockIQ4NL], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_iq4_nl_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            o[j] = d * KVALUES_IQ4NL[(b.qs[j] & 0x0f) as usize] as f32;
            o[j + QK / 2] = d * KVALUES_IQ4NL[(b.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// One base-3 digit of TQ1_0: the top digit of `byte * 3^n` read as a fixed-point fraction.
#[inline]
fn tq1_digit(byte: u8, pow3: u8) -> i32 {
    let q = byte.wrapping_mul(pow3);
    ((q as u16 * 3) >> 8) as i32
}

pub fn dequant_tq1_0_ref(blocks: &[BlockTQ1_0], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK_K,
        "dequant_tq1_0_ref: length mismatch"
    );
    const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let mut y = o.iter_mut();
        let mut put = |t: i32| *y.next().unwrap() = (t - 1) as f32 * d;
        let split = b.qs.len() - b.qs.len() % 32;
        for chunk in b.qs[..split].chunks_exact(32) {
            for &p in &POW3[..5] {
                chunk.iter().for_each(|&q| put(tq1_digit(q, p)));
            }
        }
        for chunk in b.qs[split..].chunks_exact(16) {
            for &p in &POW3[..5] {
                chunk.iter().for_each(|&q| put(tq1_digit(q, p)));
            }
        }
        for &p in &POW3[..4] {
            b.qh.iter().for_each(|&q| put(tq1_digit(q, p)));
        }
    }
}

pub fn dequant_tq2_0_ref(blocks: &[BlockTQ2_0], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK_K,
        "dequant_tq2_0_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (q, o) in b.qs.chunks_exact(32).zip(o.chunks_exact_mut(128)) {
            for (l, o) in o.chunks_exact_mut(32).enumerate() {
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = (((q >> (2 * l)) & 3) as i32 - 1) as f32 * d;
                }
            }
        }
    }
}

pub fn dequant_mxfp4_ref(blocks: &[BlockMXFP4], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        blocks.len() * QK,
        "dequant_mxfp4_ref: length mismatch"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = e8m0_to_f32_half(b.e);
        for j in 0..QK / 2 {
            o[j] = KVALUES_MXFP4[(b.qs[j] & 0x0f) as usize] as f32 * d;
            o[j + QK / 2] = KVALUES_MXFP4[(b.qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

/// The ggml tensor types this crate can read, with ggml's type ids. Also the element type of a
/// tensor in IEBIN (`format::Dtype`), serialized in lower case (`"bf16"`, `"q4_k"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    #[serde(rename = "q3_k")]
    Q3K,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
    #[serde(rename = "iq4_nl")]
    IQ4NL,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 16] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4NL,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
    ];

    /// ggml's `enum ggml_type` value.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::IQ4NL => 20,
            GgmlType::BF16 => 30,
            GgmlType::TQ1_0 => 34,
            GgmlType::TQ2_0 => 35,
            GgmlType::MXFP4 => 39,
        }
    }

    /// The type with ggml id `id`, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's type name (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::TQ1_0 => "TQ1_0",
            GgmlType::TQ2_0 => "TQ2_0",
            GgmlType::MXFP4 => "MXFP4",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4NL
            | GgmlType::MXFP4 => QK,
            GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::TQ1_0
            | GgmlType::TQ2_0 => QK_K,
        }
    }

    /// Bytes of `numel` elements (a whole number of blocks), or `None` if they don't divide.
    pub fn nbytes(self, numel: usize) -> Option<usize> {
        numel
            .is_multiple_of(self.block_elems())
            .then(|| numel / self.block_elems() * self.block_bytes())
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use std::mem::size_of;
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => size_of::<BlockQ4_0>(),
            GgmlType::Q4_1 => size_of::<BlockQ4_1>(),
            GgmlType::Q5_0 => size_of::<BlockQ5_0>(),
            GgmlType::Q5_1 => size_of::<BlockQ5_1>(),
            GgmlType::Q8_0 => size_of::<BlockQ8_0>(),
            GgmlType::Q3K => size_of::<BlockQ3K>(),
            GgmlType::Q4K => size_of::<BlockQ4K>(),
            GgmlType::Q5K => size_of::<BlockQ5K>(),
            GgmlType::Q6K => size_of::<BlockQ6K>(),
            GgmlType::IQ4NL => size_of::<BlockIQ4NL>(),
            GgmlType::TQ1_0 => size_of::<BlockTQ1_0>(),
            GgmlType::TQ2_0 => size_of::<BlockTQ2_0>(),
            GgmlType::MXFP4 => size_of::<BlockMXFP4>(),
        }
    }

    /// Dequantizes `bytes` (whole blocks as stored in GGUF, any alignment) into `out`, bit-exact
    /// with ggml. Panics unless `bytes` holds exactly `out.len()` elements of this type.
    pub fn dequant(self, bytes: &[u8], out: &mut [f32]) {
        let (elems, size) = (self.block_elems(), self.block_bytes());
        assert!(
            out.len().is_multiple_of(elems) && bytes.len() == out.len() / elems * size,
            "{}: {} bytes do not hold {} elements",
            self.name(),
            bytes.len(),
            out.len()
        );
        fn blocks<B: Pod>(bytes: &[u8]) -> Vec<B> {
            bytemuck::pod_collect_to_vec(bytes)
        }
        match self {
            GgmlType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            GgmlType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            GgmlType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            GgmlType::Q4_0 => dequant_q4_0_ref(&blocks(bytes), out),
            GgmlType::Q4_1 => dequant_q4_1_ref(&blocks(bytes), out),
            GgmlType::Q5_0 => dequant_q5_0_ref(&blocks(bytes), out),
            GgmlType::Q5_1 => dequant_q5_1_ref(&blocks(bytes), out),
            GgmlType::Q8_0 => dequant_q8_0_ref(&blocks(bytes), out),
            GgmlType::Q3K => dequant_q3_k_ref(&blocks(bytes), out),
            GgmlType::Q4K => dequant_q4_k_ref(&blocks(bytes), out),
            GgmlType::Q5K => dequant_q5_k_ref(&blocks(bytes), out),
            GgmlType::Q6K => dequant_q6_k_ref(&blocks(bytes), out),
            GgmlType::IQ4NL => dequant_iq4_nl_ref(&blocks(bytes), out),
            GgmlType::TQ1_0 => dequant_tq1_0_ref(&blocks(bytes), out),
            GgmlType::TQ2_0 => dequant_tq2_0_ref(&blocks(bytes), out),
            GgmlType::MXFP4 => dequant_mxfp4_ref(&blocks(bytes), out),
        }
    }
}
