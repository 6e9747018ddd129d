//! The Llama forward pass with run-time dimensions over f32 weights, for calibration
//! (`clocher-pack ptq`): it records the input of every linear layer. It runs the same kernels
//! as the baked model, picked by [`kernels::isa`]; inference itself always uses the
//! const-generic [`super::llama::Llama`].

use super::llama::add;
use crate::format::{layer_tensor_name, LlamaConfig};
use crate::kernels::{self, reference as r, Isa};
use crate::pool::Pool;

/// What every linear layer saw for a token sequence; each buffer is `[tokens, in_features]`.
pub struct Activations {
    pub tokens: usize,
    /// Per layer: the inputs of q/k/v, of o, of gate/up and of down.
    pub layers: Vec<LayerInputs>,
    /// The output head's input (the final norm's output).
    pub head: Vec<f32>,
}

pub struct LayerInputs {
    pub attn: Vec<f32>,
    pub attn_out: Vec<f32>,
    pub mlp: Vec<f32>,
    pub down: Vec<f32>,
}

impl Activations {
    /// The inputs recorded for weight `name` (a linear layer or the head), if it is one.
    pub fn input_of(&self, name: &str) -> Option<&[f32]> {
        if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
            return Some(&self.head);
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (l, kind) = rest.split_once('.')?;
        let li = self.layers.get(l.parse::<usize>().ok()?)?;
        Some(match kind {
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                &li.attn
            }
            "self_attn.o_proj.weight" => &li.attn_out,
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => &li.mlp,
            "mlp.down_proj.weight" => &li.down,
            _ => return None,
        })
    }
}

/// `y = W x` for a row-major f32 `W` of `y.len()` rows, sharded over the pool.
pub fn par_gemv_f32(pool: &Pool, isa: Isa, w: &[f32], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    pool.par_rows(y, 16, &|row, ys| {
        kernels::gemv_f32(isa, &w[row * cols..(row + ys.len()) * cols], x, ys)
    });
}

/// Runs `tokens` through the model whose f32 weights `w` returns by Hugging Face name, and
/// records every linear layer's input.
pub fn capture<'w>(
    c: &LlamaConfig,
    w: &dyn Fn(&str) -> &'w [f32],
    tokens: &[u32],
    pool: &Pool,
) -> Activations {
    let isa = kernels::isa();
    let (dim, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (heads, kvh) = (c.num_attention_heads, c.num_key_value_heads);
    let (qd, kvd, n) = (heads * hd, kvh * hd, tokens.len());
    let eps = c.rms_norm_eps as f32;
    let z = |k: usize| vec![0.0f32; k];
    let mut layers: Vec<LayerInputs> = (0..c.num_hidden_layers)
        .map(|_| LayerInputs {
            attn: z(n * dim),
            attn_out: z(n * qd),
            mlp: z(n * dim),
            down: z(n * inter),
        })
        .collect();
    let mut head = z(n * dim);
    let (mut x, mut xb, mut xb2) = (z(dim), z(dim), z(dim));
    let (mut q, mut k, mut v, mut att) = (z(qd), z(kvd), z(kvd), z(qd));
    let (mut hb, mut hb2) = (z(inter), z(inter));
    let (mut cos, mut sin) = (z(hd / 2), z(hd / 2));
    let mut kc = vec![z(n * kvd); c.num_hidden_layers];
    let mut vc = vec![z(n * kvd); c.num_hidden_layers];
    let mut scores = z(n);
    let embed = w("model.embed_tokens.weight");
    let lw = |l: usize, kind: &str| w(&layer_tensor_name(l, kind));
    for (pos, &tok) in tokens.iter().enumerate() {
        x.copy_from_slice(&embed[tok as usize * dim..(tok as usize + 1) * dim]);
        r::rope_cos_sin(pos, c.rope_theta as f32, hd, &mut cos, &mut sin);
        for (l, rec) in layers.iter_mut().enumerate() {
            r::rmsnorm_ref(&x, lw(l, "input_layernorm"), eps, &mut xb);
            rec.attn[pos * dim..(pos + 1) * dim].copy_from_slice(&xb);
            par_gemv_f32(pool, isa, lw(l, "self_attn.q_proj"), &xb, &mut q);
            par_gemv_f32(pool, isa, lw(l, "self_attn.k_proj"), &xb, &mut k);
            par_gemv_f32(pool, isa, lw(l, "self_attn.v_proj"), &xb, &mut v);
            r::rope_ref(&mut q, &cos, &sin);
            r::rope_ref(&mut k, &cos, &sin);
            kc[l][pos * kvd..(pos + 1) * kvd].copy_from_slice(&k);
            vc[l][pos * kvd..(pos + 1) * kvd].copy_from_slice(&v);
            let scale = 1.0 / (hd as f32).sqrt();
            for h in 0..heads {
                let g = h / (heads / kvh);
                let out = &mut att[h * hd..(h + 1) * hd];
                let mut ms = [0.0; 2];
                crate::kernels::attend(
                    isa,
                    &q[h * hd..(h + 1) * hd],
                    (&kc[l], &vc[l]),
                    (kvd, g * hd),
                    scale,
                    &mut scores[..pos + 1],
                    out,
                    &mut ms,
                );
                out.iter_mut().for_each(|v| *v /= ms[1]);
            }
            rec.attn_out[pos * qd..(pos + 1) * qd].copy_from_slice(&att);
            par_gemv_f32(pool, isa, lw(l, "self_attn.o_proj"), &att, &mut xb2);
            add(&mut x, &xb2);
            r::rmsnorm_ref(&x, lw(l, "post_attention_layernorm"), eps, &mut xb);
            rec.mlp[pos * dim..(pos + 1) * dim].copy_from_slice(&xb);
            par_gemv_f32(pool, isa, lw(l, "mlp.gate_proj"), &xb, &mut hb);
            par_gemv_f32(pool, isa, lw(l, "mlp.up_proj"), &xb, &mut hb2);
            r::silu_mul_ref(&mut hb, &hb2);
            rec.down[pos * inter..(pos + 1) * inter].copy_from_slice(&hb);
            par_gemv_f32(pool, isa, lw(l, "mlp.down_proj"), &hb, &mut xb2);
            add(&mut x, &xb2);
        }
        r::rmsnorm_ref(&x, w("model.norm.weight"), eps, &mut xb);
        head[pos * dim..(pos + 1) * dim].copy_from_slice(&xb);
    }
    Activations {
        tokens: n,
        layers,
        head,
    }
}
