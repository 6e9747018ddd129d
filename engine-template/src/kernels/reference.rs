//! Scalar reference kernels: plain safe Rust, written to read like the math.
//! They are the oracle of every SIMD kernel test and the fallback without AVX2.

use super::{KvElem, Widen};
use half::{bf16, f16};

pub fn dot_f32_ref(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32_ref: lengths differ");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `out[r][t] = dot(w[r], x[t])`: four weight rows, widened to f32, against `T` tokens (the GEMM
/// tiles of batched prefill).
pub fn dot4xt_ref<E: Widen, const T: usize>(w: [&[E]; 4], x: [&[f32]; T]) -> [[f32; T]; 4] {
    w.map(|w| x.map(|x| dot_widen_ref(w, x)))
}

/// `dot(w, x)` with `w` widened to f32.
pub fn dot_widen_ref<E: Widen>(w: &[E], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_widen_ref: lengths differ");
    w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
}

pub fn dot_bf16_ref(w: &[bf16], x: &[f32]) -> f32 {
    dot_widen_ref(w, x)
}

pub fn dot_f16_ref(w: &[f16], x: &[f32]) -> f32 {
    dot_widen_ref(w, x)
}

macro_rules! gemv_ref {
    ($name:ident, $elem:ty, $dot:ident) => {
        /// `y[r] = dot(row r of w, x)`; `w` is `[y.len(), x.len()]` row-major.
        pub fn $name(w: &[$elem], x: &[f32], y: &mut [f32]) {
            let cols = x.len();
            assert_eq!(
                w.len(),
                cols * y.len(),
                concat!(stringify!($name), ": shape mismatch")
            );
            if cols == 0 {
                y.fill(0.0);
                return;
            }
            for (yr, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
                *yr = $dot(row, x);
            }
        }
    };
}
gemv_ref!(gemv_f32_ref, f32, dot_f32_ref);
gemv_ref!(gemv_bf16_ref, bf16, dot_bf16_ref);
gemv_ref!(gemv_f16_ref, f16, dot_f16_ref);

/// Widens bf16 weights to f32 (the batched GEMM's row scratch).
pub fn widen_bf16_ref(w: &[bf16], out: &mut [f32]) {
    assert_eq!(w.len(), out.len(), "widen_bf16_ref: lengths differ");
    for (o, v) in out.iter_mut().zip(w) {
        *o = v.to_f32();
    }
}

/// Widens f16 weights to f32 (the batched GEMM's row scratch).
pub fn widen_f16_ref(w: &[f16], out: &mut [f32]) {
    assert_eq!(w.len(), out.len(), "widen_f16_ref: lengths differ");
    for (o, v) in out.iter_mut().zip(w) {
        *o = v.to_f32();
    }
}

pub fn axpy_f32_ref(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy_f32_ref: lengths differ");
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// One head's attention over `sc.len()` cached positions, unnormalized: `sc[t] = scale *
/// dot(q, key t)`, then `sc[t] = e^(sc[t] - max)` ([`exp_shifted_ref`]) and `out = sum_t sc[t]
/// * value t`; returns `(max, sum of sc)`, so `out / sum` is the attention and parts over
/// disjoint positions can be merged ([`merge_attention_ref`]). Key and value `t` are the
/// `q.len()` elements at `t * stride + at` of `k` and `v` (a layer's caches, this head's slice
/// of each row; f32 or f16, [`KvElem`]). No positions give `(-inf, 0)` and a zero `out`.
pub fn attend_ref<T: KvElem>(
    q: &[f32],
    (k, v): (&[T], &[T]),
    (stride, at): (usize, usize),
    scale: f32,
    sc: &mut [f32],
    out: &mut [f32],
) -> (f32, f32) {
    let hd = q.len();
    for (t, s) in sc.iter_mut().enumerate() {
        *s = dot_kv_ref(q, &k[t * stride + at..][..hd]) * scale;
    }
    let (max, sum) = exp_shifted_ref(sc);
    out.fill(0.0);
    for (t, &p) in sc.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&v[t * stride + at..][..hd]) {
            *o += p * x.to_f32();
        }
    }
    (max, sum)
}

/// `dot(q, key)` for a key of the KV cache, in order (as [`dot_f32_ref`] for f32 keys).
pub fn dot_kv_ref<T: KvElem>(q: &[f32], key: &[T]) -> f32 {
    dot_widen_ref(key, q)
}

/// The heads, head size and positions `(g, hd, n)` of an [`attend_heads_ref`] call (or a twin
/// of it, `name`), checked against its buffers.
pub fn attend_heads_shape(
    name: &str,
    q: &[f32],
    sc: &[f32],
    out: &[f32],
    ms: &[f32],
) -> (usize, usize, usize) {
    let g = ms.len() / 2;
    let (hd, n) = (out.len() / g.max(1), sc.len() / g.max(1));
    assert!(
        ms.len() == 2 * g && q.len() == g * hd && out.len() == g * hd && sc.len() == g * n,
        "{name}: {g} heads of {hd} over {n} positions do not match their buffers"
    );
    (g, hd, n)
}

/// [`attend_ref`] for `ms.len() / 2` query heads that share one key-value head (GQA): head
/// `h`'s query is `q[h * hd..]`, its scores `sc[h * n..]` (`n` positions each), its output
/// `out[h * hd..]`, and its `(max, sum)` goes to `ms[2 * h]` and `ms[2 * h + 1]`.
pub fn attend_heads_ref<T: KvElem>(
    q: &[f32],
    kv: (&[T], &[T]),
    at: (usize, usize),
    scale: f32,
    sc: &mut [f32],
    out: &mut [f32],
    ms: &mut [f32],
) {
    let (g, hd, n) = attend_heads_shape("attend_heads_ref", q, sc, out, ms);
    for h in 0..g {
        let (q, sc) = (&q[h * hd..(h + 1) * hd], &mut sc[h * n..(h + 1) * n]);
        (ms[2 * h], ms[2 * h + 1]) =
            attend_ref(q, kv, at, scale, sc, &mut out[h * hd..(h + 1) * hd]);
    }
}

/// `out = (sum_i w_i out_i) / (sum_i w_i sum_i)` with `w_i = e^(max_i - max)`: one head's
/// attention from the unnormalized parts [`attend_ref`] gave over disjoint positions, each
/// `(max_i, sum_i, out_i)`. Parts over no positions (`sum_i == 0`) add nothing.
pub fn merge_attention_ref<'a>(
    parts: impl Iterator<Item = (f32, f32, &'a [f32])> + Clone,
    out: &mut [f32],
) {
    let max = parts
        .clone()
        .fold(f32::NEG_INFINITY, |m, (pm, ..)| m.max(pm));
    out.fill(0.0);
    let mut total = 0.0;
    for (pm, sum, o) in parts.filter(|p| p.1 > 0.0) {
        let w = (pm - max).exp();
        total += w * sum;
        axpy_f32_ref(w, o, out);
    }
    let inv = 1.0 / total;
    out.iter_mut().for_each(|v| *v *= inv);
}

/// RMSNorm as transformers computes it: `w * (x / sqrt(mean(x²) + eps))`, in f32.
pub fn rmsnorm_ref(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == w.len() && x.len() == out.len(),
        "rmsnorm_ref: lengths differ"
    );
    if x.is_empty() {
        return;
    }
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = w * (x * inv);
    }
}

/// `x[t] = e^(x[t] - max)` in place, returning `(max, sum of the new x)`: a softmax without
/// its division (max-subtracted, so large scores don't overflow). Empty: `(-inf, 0)`.
pub fn exp_shifted_ref(x: &mut [f32]) -> (f32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    (max, sum)
}

/// RoPE in transformers' rotate-half convention, on `x` = `heads` vectors of `cos.len() * 2`:
/// `(a, b) = (x[i], x[i + half])  ->  (a cos - b sin, b cos + a sin)`.
pub fn rope_ref(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert_eq!(sin.len(), half, "rope_ref: cos/sin lengths differ");
    if half == 0 {
        return;
    }
    for head in x.chunks_exact_mut(2 * half) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// cos/sin of RoPE for one position, computed in f32 as transformers does:
/// `inv_freq[i] = 1 / theta^(2i / head_dim)`, `angle = pos * inv_freq[i]`.
pub fn rope_cos_sin(pos: usize, theta: f32, head_dim: usize, cos: &mut [f32], sin: &mut [f32]) {
    for i in 0..head_dim / 2 {
        let inv_freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
        let angle = pos as f32 * inv_freq;
        cos[i] = angle.cos();
        sin[i] = angle.sin();
    }
}

/// SwiGLU's gate: `gate = silu(gate) * up`.
pub fn silu_mul_ref(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul_ref: lengths differ");
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
