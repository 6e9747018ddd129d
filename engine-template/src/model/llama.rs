//! The Llama forward pass (transformers' `LlamaForCausalLM`), on batches of up to [`BATCH`]
//! tokens: one token (decode) runs fused GEMVs, a batch (prefill, perplexity) runs GEMMs that
//! read each weight once for the whole batch.
//!
//! Every dimension is a const parameter, and each weight tensor's format a type parameter. Derived sizes travel as their own parameters
//! (`Q_DIM = HEADS * HEAD_DIM`, `KV_DIM = KV_HEADS * HEAD_DIM`, stable Rust can't compute them)
//! and [`Layer::bind`] checks the relations at compile time with `const { assert!(..) }`.

use super::{bind_vec, quantize_rows, Acts, CausalLm, Logits, Mat, GEMV_GRAIN};
use crate::dtype::WeightType;
use crate::error::Result;
use crate::kernels::act8::ActQ8;
use crate::kernels::{self, reference as r, Isa, KvElem};
use crate::pool::{shard, Pool, SyncSlice};
use half::f16;

/// Byte offsets of one block's tensors in the blob.
#[derive(Debug, Clone, Copy)]
pub struct LayerOffsets {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    pub ffn_norm: usize,
    pub w_gate: usize,
    pub w_up: usize,
    pub w_down: usize,
}

/// Byte offsets of every tensor in the blob, baked by the generated crate.
#[derive(Debug, Clone, Copy)]
pub struct LlamaOffsets<const LAYERS: usize> {
    pub embed: usize,
    pub layers: [LayerOffsets; LAYERS],
    pub norm: usize,
    /// `None` when the output head is tied to the embedding.
    pub lm_head: Option<usize>,
}

/// One transformer block; each projection has its own weight type (GGUF files mix formats).
pub struct Layer<
    Q: WeightType,
    K: WeightType,
    V: WeightType,
    O: WeightType,
    G: WeightType,
    U: WeightType,
    D: WeightType,
    const DIM: usize,
    const INTER: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const HEAD_DIM: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
> {
    pub attn_norm: &'static [f32; DIM], // [DIM]
    pub wq: Mat<Q, Q_DIM, DIM>,         // [Q_DIM, DIM]
    pub wk: Mat<K, KV_DIM, DIM>,        // [KV_DIM, DIM]
    pub wv: Mat<V, KV_DIM, DIM>,        // [KV_DIM, DIM]
    pub wo: Mat<O, DIM, Q_DIM>,         // [DIM, Q_DIM]
    pub ffn_norm: &'static [f32; DIM],  // [DIM]
    pub w_gate: Mat<G, INTER, DIM>,     // [INTER, DIM]
    pub w_up: Mat<U, INTER, DIM>,       // [INTER, DIM]
    pub w_down: Mat<D, DIM, INTER>,     // [DIM, INTER]
}

/// The stack of blocks. [`Uniform`] serves models whose blocks all share one set of weight
/// types; a generated crate implements it for a struct with one field per block otherwise.
pub trait Layers<const LAYERS: usize>: Sized + Send + Sync {
    /// Whether some block has a weight with a batched 8-bit kernel ([`Layer::GEMM_Q8`]).
    const GEMM_Q8: bool;
    fn bind(blob: &'static [u8], offsets: &[LayerOffsets; LAYERS]) -> Result<Self>;
    /// Runs every block on the `n` tokens in `s` at positions `pos..pos + n` (`at` is `(pos, n,
    /// keep)`); the last block carries only the last `keep` tokens' rows through
    /// ([`Layer::forward`]).
    fn forward(&self, s: &mut LlamaState, pool: &Pool, at: (usize, usize, usize), eps: f32);
}

/// `LAYERS` blocks of one type.
pub struct Uniform<L>(pub Vec<L>);

pub struct Llama<
    E: WeightType,
    H: WeightType,
    L: Layers<LAYERS>,
    const DIM: usize,
    const INTER: usize,
    const LAYERS: usize,
    const HEADS: usize,
    const KV_HEADS: usize,
    const HEAD_DIM: usize,
    const Q_DIM: usize,
    const KV_DIM: usize,
    const VOCAB: usize,
    const CONTEXT: usize,
> {
    pub embed: Mat<E, VOCAB, DIM>,   // [VOCAB, DIM]
    pub layers: L,                   // LAYERS blocks
    pub norm: &'static [f32; DIM],   // [DIM]
    pub lm_head: Mat<H, VOCAB, DIM>, // [VOCAB, DIM]; the embedding when tied
    pub eps: f32,
    pub theta: f32,
}

/// Positions a thread's share of attention is rounded to (the scores go four keys at a time).
const ATT_GRAIN: usize = 4;

/// Tokens a forward call processes together (prefill and perplexity run in batches of this).
pub const BATCH: usize = 32;

/// Activations, KV cache and scratch of one sequence; the per-token buffers hold [`BATCH`]
/// tokens, row after row.
pub struct LlamaState {
    x: Vec<f32>,         // [BATCH, DIM] residual stream
    xb: Vec<f32>,        // [BATCH, DIM] normed input
    xb2: Vec<f32>,       // [BATCH, DIM] projection output
    q: Vec<f32>,         // [BATCH, Q_DIM]
    att_out: Vec<f32>,   // [BATCH, Q_DIM]
    k: Vec<f32>,         // [BATCH, KV_DIM]
    v: Vec<f32>,         // [BATCH, KV_DIM]
    hb: Vec<f32>,        // [BATCH, INTER]
    hb2: Vec<f32>,       // [BATCH, INTER]
    scores: Vec<f32>,    // [HEADS * ctx]: positions p0..p1's, head by head, at HEADS * p0
    cos: Vec<f32>,       // [BATCH, HEAD_DIM / 2]
    sin: Vec<f32>,       // [BATCH, HEAD_DIM / 2]
    kv: KvCache,         // keys and values, each [LAYERS, KV_HEADS, ctx, HEAD_DIM] (ADR 35)
    logits: Vec<f32>,    // [tokens asked for, VOCAB]
    xq: ActQ8,           // one token's activations in 8 bits, [max(DIM, Q_DIM, INTER)]
    xqs: Vec<ActQ8>,     // [BATCH] tokens' activations in 8 bits, each as `xq`
    att_parts: Vec<f32>, // per thread: decode's parts (Q_DIM + 2 * HEADS), or prefill's scratch
    ctx: usize,
}

/// The KV cache: f32, or f16 as llama.cpp keeps it by default, half the bytes attention
/// reads each token (ADR 36).
enum KvCache {
    F32(super::Zeroed<f32>, super::Zeroed<f32>),
    F16(super::Zeroed<f16>, super::Zeroed<f16>),
}

impl KvCache {
    fn new(f16: bool, len: usize) -> KvCache {
        use super::Zeroed;
        match f16 {
            true => KvCache::F16(Zeroed::new(len), Zeroed::new(len)),
            false => KvCache::F32(Zeroed::new(len), Zeroed::new(len)),
        }
    }

    /// Asks for the keys and values of positions `p0..p1` of block `l`'s `kv_heads` heads
    /// (head-major: `[layer][kv head][ctx][head_dim]`).
    fn prefetch(
        &self,
        l: usize,
        (kv_heads, head_dim, ctx): (usize, usize, usize),
        (p0, p1): (usize, usize),
    ) {
        fn run<T>(
            k: &[T],
            v: &[T],
            l: usize,
            (kv_heads, head_dim, ctx): (usize, usize, usize),
            (p0, p1): (usize, usize),
        ) {
            for g in 0..kv_heads {
                let head = (l * kv_heads + g) * ctx * head_dim;
                let span = head + p0 * head_dim..head + p1 * head_dim;
                kernels::prefetch(&k[span.clone()]);
                kernels::prefetch(&v[span]);
            }
        }
        match self {
            KvCache::F32(k, v) => run(k, v, l, (kv_heads, head_dim, ctx), (p0, p1)),
            KvCache::F16(k, v) => run(k, v, l, (kv_heads, head_dim, ctx), (p0, p1)),
        }
    }
}

macro_rules! impl_for_layer_types {
    ([$($extra:tt)*] $($body:tt)*) => {
        impl<
                Q: WeightType,
                K: WeightType,
                V: WeightType,
                O: WeightType,
                G: WeightType,
                U: WeightType,
                D: WeightType,
                const DIM: usize,
                const INTER: usize,
                const HEADS: usize,
                const KV_HEADS: usize,
                const HEAD_DIM: usize,
                const Q_DIM: usize,
                const KV_DIM: usize,
                $($extra)*
            > $($body)*
    };
}

impl_for_layer_types! {
    []
    Layer<Q, K, V, O, G, U, D, DIM, INTER, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM> {
        /// Whether some weight of the block has a batched 8-bit kernel ([`WeightType::GEMM_Q8`]).
        pub const GEMM_Q8: bool = Q::GEMM_Q8 || K::GEMM_Q8 || V::GEMM_Q8 || O::GEMM_Q8 || G::GEMM_Q8 || U::GEMM_Q8 || D::GEMM_Q8;

        pub fn bind(blob: &'static [u8], lo: &LayerOffsets, l: usize) -> Result<Self> {
            const {
                assert!(Q_DIM == HEADS * HEAD_DIM, "Q_DIM must equal HEADS * HEAD_DIM");
                assert!(KV_DIM == KV_HEADS * HEAD_DIM, "KV_DIM must equal KV_HEADS * HEAD_DIM");
                assert!(KV_HEADS > 0 && HEADS.is_multiple_of(KV_HEADS), "HEADS must be a multiple of KV_HEADS");
                assert!(HEAD_DIM.is_multiple_of(2), "RoPE needs an even HEAD_DIM");
            }
            let n = |k: &str| format!("model.layers.{l}.{k}.weight");
            Ok(Layer {
                attn_norm: bind_vec(blob, lo.attn_norm, &n("input_layernorm"))?,
                wq: Mat::bind(blob, lo.wq, &n("self_attn.q_proj"))?,
                wk: Mat::bind(blob, lo.wk, &n("self_attn.k_proj"))?,
                wv: Mat::bind(blob, lo.wv, &n("self_attn.v_proj"))?,
                wo: Mat::bind(blob, lo.wo, &n("self_attn.o_proj"))?,
                ffn_norm: bind_vec(blob, lo.ffn_norm, &n("post_attention_layernorm"))?,
                w_gate: Mat::bind(blob, lo.w_gate, &n("mlp.gate_proj"))?,
                w_up: Mat::bind(blob, lo.w_up, &n("mlp.up_proj"))?,
                w_down: Mat::bind(blob, lo.w_down, &n("mlp.down_proj"))?,
            })
        }

        /// Writes the new keys and values `k` and `v` (`[n, KV_DIM]`, rounded to the cache's
        /// element type) into layer `l` of the head-major caches (`[layers, KV_HEADS, ctx,
        /// HEAD_DIM]` each, ADR 35), at positions `pos..pos + n`, then runs the attention of
        /// tokens `skip..n` over the layer's cached positions: `q` is `[n - skip, Q_DIM]`, the
        /// output `att_out` `[n - skip, Q_DIM]`.
        #[allow(clippy::type_complexity)]
        fn attention<T: KvElem>(
            isa: Isa,
            pool: &Pool,
            (kc, vc): (&mut [T], &mut [T]),
            (k, v): (&[f32], &[f32]),
            (q_all, scores, att_parts, att_out): (&[f32], &mut [f32], &mut Vec<f32>, &mut [f32]),
            (l, ctx, pos, n): (usize, usize, usize, usize),
            skip: usize,
        ) {
            for i in 0..n {
                for g in 0..KV_HEADS {
                    let (at, row) = (((l * KV_HEADS + g) * ctx + pos + i) * HEAD_DIM, i * KV_DIM + g * HEAD_DIM);
                    T::store(&k[row..row + HEAD_DIM], &mut kc[at..at + HEAD_DIM]);
                    T::store(&v[row..row + HEAD_DIM], &mut vc[at..at + HEAD_DIM]);
                }
            }
            let layer = l * ctx * KV_DIM..(l + 1) * ctx * KV_DIM;
            let (layer_k, layer_v) = (&kc[layer.clone()], &vc[layer]);
            let scale = 1.0 / (HEAD_DIM as f32).sqrt();
            // The queries are those of tokens skip..n.
            let (pos, n) = (pos + skip, n - skip);
            if n > 1 {
                return Self::attention_batch(isa, pool, (layer_k, layer_v), (q_all, att_parts, att_out), (ctx, pos, n), scale);
            }
            if n == 0 {
                return;
            }
            // One token (decode). One thread's share: every head's unnormalized output, then its
            // (max, sum) pairs.
            let (nt, part) = (pool.threads(), Q_DIM + 2 * HEADS);
            if att_parts.len() < nt * part {
                att_parts.resize(nt * part, 0.0);
            }
            // The token sees positions 0..=pos (causal).
            let (seen, q) = (pos + 1, &q_all[..Q_DIM]);
            let (scores, parts) = (SyncSlice::new(scores), SyncSlice::new(att_parts));
            // Each thread takes a contiguous share of the positions, for every head, and the
            // shares are merged below. Sharded by heads instead, 9 heads gave one thread 5 and
            // the other 4, and the threads both read the rows of the key-value head they shared.
            pool.broadcast(&|t, nt| {
                let (p0, p1) = shard(seen, t, nt, ATT_GRAIN);
                // SAFETY: part `t` of the scratch, and the scores of positions p0..p1 (every
                // head's, `HEADS * p0..HEADS * p1`), are this thread's alone.
                let (outs, max_sum) = unsafe { parts.range(t * part, part) }.split_at_mut(Q_DIM);
                let sc = unsafe { scores.range(HEADS * p0, HEADS * (p1 - p0)) };
                // The query heads that share a key-value head (h0..h1) go together.
                let m = p1 - p0;
                for g in 0..KV_HEADS {
                    let (h0, h1) = (g * (HEADS / KV_HEADS), (g + 1) * (HEADS / KV_HEADS));
                    // Head-major cache (ADR 35): head `g`'s keys are `layer_k[g * ctx * HEAD_DIM..]`.
                    let first = (g * ctx + p0) * HEAD_DIM;
                    kernels::attend(
                        isa,
                        &q[h0 * HEAD_DIM..h1 * HEAD_DIM],
                        (&layer_k[first..], &layer_v[first..]),
                        (HEAD_DIM, 0),
                        scale,
                        &mut sc[h0 * m..h1 * m],
                        &mut outs[h0 * HEAD_DIM..h1 * HEAD_DIM],
                        &mut max_sum[2 * h0..2 * h1],
                    );
                }
            });
            let parts = &att_parts[..nt * part];
            for (h, out_h) in att_out[..Q_DIM].chunks_exact_mut(HEAD_DIM).enumerate() {
                let each = parts
                    .chunks_exact(part)
                    .map(|p| (p[Q_DIM + 2 * h], p[Q_DIM + 2 * h + 1], &p[h * HEAD_DIM..(h + 1) * HEAD_DIM]));
                r::merge_attention_ref(each, out_h);
            }
        }

        /// [`Self::attention`] of a batch of `n` tokens (prefill) in one pool dispatch: the threads
        /// take the (token, key-value head) pairs in turn, each pair over every position its
        /// token sees. One dispatch per token, its positions shared out, cost 16 dispatches a
        /// layer for a 16-token prompt, most of them over fewer positions than a thread's grain.
        #[allow(clippy::type_complexity)]
        fn attention_batch<T: KvElem>(
            isa: Isa,
            pool: &Pool,
            (layer_k, layer_v): (&[T], &[T]),
            (q_all, att_parts, att_out): (&[f32], &mut Vec<f32>, &mut [f32]),
            (ctx, pos, n): (usize, usize, usize),
            scale: f32,
        ) {
            let group = HEADS / KV_HEADS;
            // A thread's scratch: a group's scores over the most positions a token sees, its
            // unnormalized outputs, its (max, sum) pairs.
            let part = group * (pos + n + HEAD_DIM + 2);
            if att_parts.len() < pool.threads() * part {
                att_parts.resize(pool.threads() * part, 0.0);
            }
            let (parts, outs) = (SyncSlice::new(att_parts), SyncSlice::new(att_out));
            pool.broadcast(&|t, nt| {
                // SAFETY: part `t` of the scratch is this thread's alone.
                let scratch = unsafe { parts.range(t * part, part) };
                let (sc, rest) = scratch.split_at_mut(group * (pos + n));
                let (o, ms) = rest.split_at_mut(group * HEAD_DIM);
                // Pairs in turn (not in runs), as later tokens see more positions.
                for j in (t..n * KV_HEADS).step_by(nt) {
                    let (i, g) = (j / KV_HEADS, j % KV_HEADS);
                    let (seen, q0) = (pos + i + 1, i * Q_DIM + g * group * HEAD_DIM);
                    let first = g * ctx * HEAD_DIM;
                    kernels::attend(
                        isa,
                        &q_all[q0..q0 + group * HEAD_DIM],
                        (&layer_k[first..], &layer_v[first..]),
                        (HEAD_DIM, 0),
                        scale,
                        &mut sc[..group * seen],
                        o,
                        ms,
                    );
                    // SAFETY: token i's outputs of heads in group g are this pair's alone.
                    let dst = unsafe { outs.range(q0, group * HEAD_DIM) };
                    for (h, out_h) in dst.chunks_exact_mut(HEAD_DIM).enumerate() {
                        // One part: its sums divided by its total (every token sees itself).
                        let inv = 1.0 / ms[2 * h + 1];
                        for (d, &v) in out_h.iter_mut().zip(&o[h * HEAD_DIM..(h + 1) * HEAD_DIM]) {
                            *d = v * inv;
                        }
                    }
                }
            });
        }

        /// Block `l` on the `n` tokens in `s` at positions `pos..pos + n`:
        /// `x += attn(norm(x)); x += mlp(norm(x))`. Only the last `keep` tokens' rows of `x` are
        /// carried through; the others give their keys and values to the cache alone (the last
        /// block, where only the tokens whose logits are wanted go on, as llama.cpp skips them).
        pub fn forward(&self, l: usize, s: &mut LlamaState, pool: &Pool, (pos, n, keep): (usize, usize, usize), eps: f32) {
            let isa = kernels::isa();
            let half = HEAD_DIM / 2;
            assert!(keep <= n, "block {l}: keeps {keep} of {n} tokens");
            let (skip, m) = (n - keep, keep);

            // Attention: rmsnorm, q/k/v projections, rope, cache, scaled-dot-product, output.
            rmsnorm_rows(&s.x[..n * DIM], self.attn_norm, eps, &mut s.xb[..n * DIM]);
            if n == 1 {
                // Decode: q, k and v in one pool dispatch, on activations quantized once.
                let a = Acts::new(isa, &s.xb[..DIM], (Q::ACT8 || K::ACT8 || V::ACT8, Q::LANES || K::LANES || V::LANES), &mut s.xq);
                let (q, k, v) = (SyncSlice::new(&mut s.q), SyncSlice::new(&mut s.k), SyncSlice::new(&mut s.v));
                let (kv, ctx) = (&s.kv, s.ctx);
                pool.broadcast(&|t, nt| {
                    // The keys and values of the positions this thread will attend over (as
                    // `attention` shards them), asked for now so they arrive while the projections
                    // stream: the weights of the other layers evict them every token, and
                    // attention then waited on them (ADR 42).
                    kv.prefetch(l, (KV_HEADS, HEAD_DIM, ctx), shard(pos + 1, t, nt, ATT_GRAIN));
                    self.wq.gemv_part(isa, a, t, nt, &q);
                    self.wk.gemv_part(isa, a, t, nt, &k);
                    self.wv.gemv_part(isa, a, t, nt, &v);
                });
            } else {
                let xb = &s.xb[..n * DIM];
                let xq = quantize_rows(isa, xb, DIM, (Q::GEMM_Q8 || K::GEMM_Q8 || V::GEMM_Q8, Q::LANES || K::LANES || V::LANES), &mut s.xqs);
                if m > 0 {
                    let xq_kept = xq.map(|q| &q[skip..]);
                    self.wq.matmul(pool, m, &xb[skip * DIM..], xq_kept, &mut s.q);
                }
                self.wk.matmul(pool, n, xb, xq, &mut s.k);
                self.wv.matmul(pool, n, xb, xq, &mut s.v);
            }
            for i in 0..n {
                let (cos, sin) = (&s.cos[i * half..(i + 1) * half], &s.sin[i * half..(i + 1) * half]);
                if i >= skip {
                    r::rope_ref(&mut s.q[(i - skip) * Q_DIM..(i - skip + 1) * Q_DIM], cos, sin);
                }
                r::rope_ref(&mut s.k[i * KV_DIM..(i + 1) * KV_DIM], cos, sin);
            }
            // The new keys and values into the cache, then the kept tokens' attention.
            let new = (&s.k[..n * KV_DIM], &s.v[..n * KV_DIM]);
            let st = (&s.q[..m * Q_DIM], &mut s.scores[..], &mut s.att_parts, &mut s.att_out[..m * Q_DIM]);
            let at = (l, s.ctx, pos, n);
            match &mut s.kv {
                KvCache::F32(kc, vc) => Self::attention(isa, pool, (kc, vc), new, st, at, skip),
                KvCache::F16(kc, vc) => Self::attention(isa, pool, (kc, vc), new, st, at, skip),
            }
            if m == 0 {
                return;
            }
            if m == 1 {
                let a = Acts::new(isa, &s.att_out[..Q_DIM], (O::ACT8, O::LANES), &mut s.xq);
                self.wo.gemv(pool, a, &mut s.xb2);
            } else {
                let att = &s.att_out[..m * Q_DIM];
                let xq = quantize_rows(isa, att, Q_DIM, (O::GEMM_Q8, O::LANES), &mut s.xqs);
                self.wo.matmul(pool, m, att, xq, &mut s.xb2);
            }
            let x = &mut s.x[skip * DIM..n * DIM];
            add(x, &s.xb2[..m * DIM]);

            // MLP: rmsnorm, SwiGLU, down projection, residual.
            rmsnorm_rows(x, self.ffn_norm, eps, &mut s.xb[..m * DIM]);
            if m == 1 {
                // Decode: gate, up and the SwiGLU of each thread's rows in one pool dispatch
                // (gate and up have the same rows, so a thread's shares line up).
                let a = Acts::new(isa, &s.xb[..DIM], (G::ACT8 || U::ACT8, G::LANES || U::LANES), &mut s.xq);
                let (g, u) = (SyncSlice::new(&mut s.hb), SyncSlice::new(&mut s.hb2));
                pool.broadcast(&|t, nt| {
                    self.w_gate.gemv_part(isa, a, t, nt, &g);
                    self.w_up.gemv_part(isa, a, t, nt, &u);
                    let (r0, r1) = shard(INTER, t, nt, GEMV_GRAIN);
                    // SAFETY: rows r0..r1 of both are this thread's alone.
                    unsafe { kernels::silu_mul(isa, g.range(r0, r1 - r0), u.range(r0, r1 - r0)) };
                });
                let a = Acts::new(isa, &s.hb[..INTER], (D::ACT8, D::LANES), &mut s.xq);
                self.w_down.gemv(pool, a, &mut s.xb2);
            } else {
                let xb = &s.xb[..m * DIM];
                let xq = quantize_rows(isa, xb, DIM, (G::GEMM_Q8 || U::GEMM_Q8, G::LANES || U::LANES), &mut s.xqs);
                self.w_gate.matmul(pool, m, xb, xq, &mut s.hb);
                self.w_up.matmul(pool, m, xb, xq, &mut s.hb2);
                // On the pool: an `exp` a value, on one thread while the other waited, was 5% of
                // prefill's samples.
                let up = &s.hb2[..m * INTER];
                pool.par_rows(&mut s.hb[..m * INTER], GEMV_GRAIN, &|start, g| {
                    kernels::silu_mul(isa, g, &up[start..start + g.len()])
                });
                let hb = &s.hb[..m * INTER];
                let xq = quantize_rows(isa, hb, INTER, (D::GEMM_Q8, D::LANES), &mut s.xqs);
                self.w_down.matmul(pool, m, hb, xq, &mut s.xb2);
            }
            add(&mut s.x[skip * DIM..n * DIM], &s.xb2[..m * DIM]);
        }
    }
}

/// RMSNorm of each `w.len()`-long row of `x` into `out`.
fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let isa = kernels::isa();
    for (x, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        kernels::rmsnorm(isa, x, w, eps, o);
    }
}

impl_for_layer_types! {
    [const LAYERS: usize]
    Layers<LAYERS> for Uniform<Layer<Q, K, V, O, G, U, D, DIM, INTER, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM>> {
        const GEMM_Q8: bool = Layer::<Q, K, V, O, G, U, D, DIM, INTER, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM>::GEMM_Q8;
        fn bind(blob: &'static [u8], offsets: &[LayerOffsets; LAYERS]) -> Result<Self> {
            let layers = offsets.iter().enumerate().map(|(l, o)| Layer::bind(blob, o, l));
            Ok(Uniform(layers.collect::<Result<Vec<_>>>()?))
        }
        fn forward(&self, s: &mut LlamaState, pool: &Pool, (pos, n, keep): (usize, usize, usize), eps: f32) {
            for (l, layer) in self.0.iter().enumerate() {
                let keep = if l + 1 == self.0.len() { keep } else { n };
                layer.forward(l, s, pool, (pos, n, keep), eps);
            }
        }
    }
}

impl<
        E: WeightType,
        H: WeightType,
        L: Layers<LAYERS>,
        const DIM: usize,
        const INTER: usize,
        const LAYERS: usize,
        const HEADS: usize,
        const KV_HEADS: usize,
        const HEAD_DIM: usize,
        const Q_DIM: usize,
        const KV_DIM: usize,
        const VOCAB: usize,
        const CONTEXT: usize,
    > CausalLm
    for Llama<E, H, L, DIM, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM, VOCAB, CONTEXT>
{
    type Offsets = LlamaOffsets<LAYERS>;
    type State = LlamaState;
    const VOCAB: usize = VOCAB;
    const CONTEXT: usize = CONTEXT;
    const GEMM_Q8: bool = L::GEMM_Q8;
    const HEAD_ACT8: bool = H::ACT8;
    const HEAD_GEMM_Q8: bool = H::GEMM_Q8;

    fn load(blob: &'static [u8], o: &LlamaOffsets<LAYERS>, eps: f32, theta: f32) -> Result<Self> {
        Ok(Llama {
            embed: Mat::bind(blob, o.embed, "model.embed_tokens.weight")?,
            layers: L::bind(blob, &o.layers)?,
            norm: bind_vec(blob, o.norm, "model.norm.weight")?,
            lm_head: Mat::bind(blob, o.lm_head.unwrap_or(o.embed), "lm_head.weight")?,
            eps,
            theta,
        })
    }

    fn new_state(&self, ctx: usize) -> LlamaState {
        let z = |n: usize| vec![0.0f32; n];
        LlamaState {
            x: z(BATCH * DIM),
            xb: z(BATCH * DIM),
            xb2: z(BATCH * DIM),
            q: z(BATCH * Q_DIM),
            att_out: z(BATCH * Q_DIM),
            k: z(BATCH * KV_DIM),
            v: z(BATCH * KV_DIM),
            hb: z(BATCH * INTER),
            hb2: z(BATCH * INTER),
            scores: z(HEADS * ctx),
            cos: z(BATCH * HEAD_DIM / 2),
            sin: z(BATCH * HEAD_DIM / 2),
            kv: KvCache::new(super::kv_f16(), LAYERS * ctx * KV_DIM),
            logits: z(VOCAB),
            xq: ActQ8::default(),
            xqs: Vec::new(),
            att_parts: Vec::new(),
            ctx,
        }
    }

    fn forward<'s>(
        &self,
        s: &'s mut LlamaState,
        pool: &Pool,
        tokens: &[u32],
        pos: usize,
        want: Logits,
    ) -> Option<&'s [f32]> {
        assert!(
            pos + tokens.len() <= s.ctx,
            "llama forward: positions {pos}..{} past the context of {}",
            pos + tokens.len(),
            s.ctx
        );
        let (first_row, rows) = match want {
            Logits::None => (tokens.len(), 0),
            Logits::Last => (tokens.len().saturating_sub(1), tokens.len().min(1)),
            Logits::From(k) => (k.min(tokens.len()), tokens.len().saturating_sub(k)),
        };
        if s.logits.len() < rows * VOCAB {
            s.logits.resize(rows * VOCAB, 0.0);
        }
        let half = HEAD_DIM / 2;
        for (c, chunk) in tokens.chunks(BATCH).enumerate() {
            let (p0, n) = (pos + c * BATCH, chunk.len());
            for (i, &tok) in chunk.iter().enumerate() {
                E::to_f32(
                    self.embed.row(tok as usize),
                    &mut s.x[i * DIM..(i + 1) * DIM],
                );
                let (cos, sin) = (
                    &mut s.cos[i * half..(i + 1) * half],
                    &mut s.sin[i * half..(i + 1) * half],
                );
                r::rope_cos_sin(p0 + i, self.theta, HEAD_DIM, cos, sin);
            }
            // Logits of this chunk's tokens at or after `first_row`: the last block carries
            // only those through.
            let lo = first_row.max(c * BATCH);
            let m = (c * BATCH + n).saturating_sub(lo);
            self.layers.forward(s, pool, (p0, n, m), self.eps);
            if m > 0 {
                let skip = n - m;
                rmsnorm_rows(
                    &s.x[skip * DIM..n * DIM],
                    self.norm,
                    self.eps,
                    &mut s.xb[..m * DIM],
                );
                let out = (lo - first_row) * VOCAB;
                let logits = &mut s.logits[out..out + m * VOCAB];
                if m == 1 {
                    let a =
                        Acts::head(kernels::isa(), &s.xb[..DIM], (H::ACT8, H::LANES), &mut s.xq);
                    self.lm_head.gemv(pool, a, logits);
                } else {
                    let xb = &s.xb[..m * DIM];
                    let xq =
                        quantize_rows(kernels::isa(), xb, DIM, (H::GEMM_Q8, H::LANES), &mut s.xqs);
                    self.lm_head.matmul(pool, m, xb, xq, logits);
                }
            }
        }
        (rows > 0).then(|| &s.logits[..rows * VOCAB])
    }
}

/// `x += y` (the residual adds).
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
