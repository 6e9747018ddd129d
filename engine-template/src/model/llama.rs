//! The Llama forward pass (transformers' `LlamaForCausalLM`), one token at a time.
//!
//! Every dimension is a const parameter, and each weight tensor's format a type parameter. Derived sizes travel as their own parameters
//! (`Q_DIM = HEADS * HEAD_DIM`, `KV_DIM = KV_HEADS * HEAD_DIM`, stable Rust can't compute them)
//! and [`Layer::bind`] checks the relations at compile time with `const { assert!(..) }`.

use super::{bind_vec, CausalLm, Mat};
use crate::dtype::WeightType;
use crate::error::Result;
use crate::kernels::{self, reference as r};
use crate::pool::{Pool, SyncSlice};

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
    fn bind(blob: &'static [u8], offsets: &[LayerOffsets; LAYERS]) -> Result<Self>;
    /// Runs every block at position `pos` on the residual stream in `s`.
    fn forward(&self, s: &mut LlamaState, pool: &Pool, pos: usize, eps: f32);
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

/// Activations, KV cache and scratch of one sequence.
pub struct LlamaState {
    x: Vec<f32>,       // [DIM] residual stream
    xb: Vec<f32>,      // [DIM] normed input
    xb2: Vec<f32>,     // [DIM] projection output
    q: Vec<f32>,       // [Q_DIM]
    att_out: Vec<f32>, // [Q_DIM]
    k: Vec<f32>,       // [KV_DIM]
    v: Vec<f32>,       // [KV_DIM]
    hb: Vec<f32>,      // [INTER]
    hb2: Vec<f32>,     // [INTER]
    scores: Vec<f32>,  // [HEADS, ctx]
    cos: Vec<f32>,     // [HEAD_DIM / 2]
    sin: Vec<f32>,     // [HEAD_DIM / 2]
    k_cache: Vec<f32>, // [LAYERS, ctx, KV_DIM]
    v_cache: Vec<f32>, // [LAYERS, ctx, KV_DIM]
    logits: Vec<f32>,  // [VOCAB]
    ctx: usize,
}

/// `&mut v[..N]` as an array reference (the buffers are sized for it by `new_state`).
fn arr<const N: usize>(v: &mut [f32]) -> &mut [f32; N] {
    (&mut v[..N])
        .try_into()
        .expect("state buffer sized by new_state")
}
fn arr_ref<const N: usize>(v: &[f32]) -> &[f32; N] {
    (&v[..N])
        .try_into()
        .expect("state buffer sized by new_state")
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

        /// Block `l` at position `pos`: `x += attn(norm(x)); x += mlp(norm(x))`.
        pub fn forward(&self, l: usize, s: &mut LlamaState, pool: &Pool, pos: usize, eps: f32) {
            let isa = kernels::isa();
            let scale = 1.0 / (HEAD_DIM as f32).sqrt();

            // Attention: rmsnorm, q/k/v projections, rope, cache, scaled-dot-product, output.
            r::rmsnorm_ref(&s.x, self.attn_norm, eps, &mut s.xb);
            let xb = arr_ref::<DIM>(&s.xb);
            self.wq.gemv(pool, xb, arr::<Q_DIM>(&mut s.q));
            self.wk.gemv(pool, xb, arr::<KV_DIM>(&mut s.k));
            self.wv.gemv(pool, xb, arr::<KV_DIM>(&mut s.v));
            r::rope_ref(&mut s.q, &s.cos, &s.sin);
            r::rope_ref(&mut s.k, &s.cos, &s.sin);
            let base = (l * s.ctx + pos) * KV_DIM;
            s.k_cache[base..base + KV_DIM].copy_from_slice(&s.k);
            s.v_cache[base..base + KV_DIM].copy_from_slice(&s.v);

            let layer_k = &s.k_cache[l * s.ctx * KV_DIM..(l + 1) * s.ctx * KV_DIM];
            let layer_v = &s.v_cache[l * s.ctx * KV_DIM..(l + 1) * s.ctx * KV_DIM];
            let (q, ctx) = (&s.q, s.ctx);
            let scores = SyncSlice::new(&mut s.scores);
            // Sharded by whole heads (grain HEAD_DIM): each thread owns its heads' output and scores.
            pool.par_rows(&mut s.att_out, HEAD_DIM, &|start, out| {
                for (i, out_h) in out.chunks_exact_mut(HEAD_DIM).enumerate() {
                    let h = start / HEAD_DIM + i;
                    let kvh = h / (HEADS / KV_HEADS);
                    let q_h = &q[h * HEAD_DIM..(h + 1) * HEAD_DIM];
                    // SAFETY: head `h` belongs to this thread alone.
                    let sc = unsafe { scores.range(h * ctx, pos + 1) };
                    for (t, sc) in sc.iter_mut().enumerate() {
                        let k_t = &layer_k[t * KV_DIM + kvh * HEAD_DIM..][..HEAD_DIM];
                        *sc = kernels::dot_f32(isa, q_h, k_t) * scale;
                    }
                    r::softmax_ref(sc);
                    out_h.fill(0.0);
                    for (t, &p) in sc.iter().enumerate() {
                        let v_t = &layer_v[t * KV_DIM + kvh * HEAD_DIM..][..HEAD_DIM];
                        kernels::axpy_f32(isa, p, v_t, out_h);
                    }
                }
            });
            self.wo.gemv(pool, arr_ref::<Q_DIM>(&s.att_out), arr::<DIM>(&mut s.xb2));
            add(&mut s.x, &s.xb2);

            // MLP: rmsnorm, SwiGLU, down projection, residual.
            r::rmsnorm_ref(&s.x, self.ffn_norm, eps, &mut s.xb);
            let xb = arr_ref::<DIM>(&s.xb);
            self.w_gate.gemv(pool, xb, arr::<INTER>(&mut s.hb));
            self.w_up.gemv(pool, xb, arr::<INTER>(&mut s.hb2));
            r::silu_mul_ref(&mut s.hb, &s.hb2);
            self.w_down.gemv(pool, arr_ref::<INTER>(&s.hb), arr::<DIM>(&mut s.xb2));
            add(&mut s.x, &s.xb2);
        }
    }
}

impl_for_layer_types! {
    [const LAYERS: usize]
    Layers<LAYERS> for Uniform<Layer<Q, K, V, O, G, U, D, DIM, INTER, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM>> {
        fn bind(blob: &'static [u8], offsets: &[LayerOffsets; LAYERS]) -> Result<Self> {
            let layers = offsets.iter().enumerate().map(|(l, o)| Layer::bind(blob, o, l));
            Ok(Uniform(layers.collect::<Result<Vec<_>>>()?))
        }
        fn forward(&self, s: &mut LlamaState, pool: &Pool, pos: usize, eps: f32) {
            for (l, layer) in self.0.iter().enumerate() {
                layer.forward(l, s, pool, pos, eps);
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
            x: z(DIM),
            xb: z(DIM),
            xb2: z(DIM),
            q: z(Q_DIM),
            att_out: z(Q_DIM),
            k: z(KV_DIM),
            v: z(KV_DIM),
            hb: z(INTER),
            hb2: z(INTER),
            scores: z(HEADS * ctx),
            cos: z(HEAD_DIM / 2),
            sin: z(HEAD_DIM / 2),
            // Zeroed allocations are mapped lazily, so an unused context costs no memory.
            k_cache: z(LAYERS * ctx * KV_DIM),
            v_cache: z(LAYERS * ctx * KV_DIM),
            logits: z(VOCAB),
            ctx,
        }
    }

    fn step<'s>(
        &self,
        s: &'s mut LlamaState,
        pool: &Pool,
        token: u32,
        pos: usize,
        want_logits: bool,
    ) -> Option<&'s [f32]> {
        assert!(
            pos < s.ctx,
            "llama step: position {pos} past the context of {}",
            s.ctx
        );
        E::to_f32(self.embed.row(token as usize), arr::<DIM>(&mut s.x));
        r::rope_cos_sin(pos, self.theta, HEAD_DIM, &mut s.cos, &mut s.sin);
        self.layers.forward(s, pool, pos, self.eps);
        if !want_logits {
            return None;
        }
        r::rmsnorm_ref(&s.x, self.norm, self.eps, &mut s.xb);
        self.lm_head
            .gemv(pool, arr_ref::<DIM>(&s.xb), arr::<VOCAB>(&mut s.logits));
        Some(&s.logits)
    }
}

/// `x += y` (the residual adds).
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
