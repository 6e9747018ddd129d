//! The code generator behind `clocher_macros::model!`: `model.ie.json` in, Rust tokens out.
//!
//! [`validate`] checks the tensor table against the config (every shape, dtype, offset);
//! [`generate`] emits a `model` module of constants, types and thin glue that instantiates
//! [`crate::model::llama::Llama`] for exactly this model. No logic lives in generated code.

use crate::dtype;
use crate::format::{self, Dtype, ModelMeta};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

/// Why a `model.ie.json` can't be baked. The message names the tensor and both shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct CodegenError(pub String);

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, CodegenError> {
    Err(CodegenError(msg.into()))
}

/// Paths the generated code refers to (absolute, so the crate builds wherever it was written).
pub struct Paths<'a> {
    pub meta_json: &'a str,
    pub model_dir: &'a str,
    pub tokenizer_json: &'a str,
    pub tokenizer_digest: &'a str,
    pub blob: &'a str,
}

/// Checks that the tensor table agrees with the config: names, shapes, dtypes, offsets.
pub fn validate(m: &ModelMeta) -> Result<(), CodegenError> {
    if m.format != format::FORMAT || m.version != format::VERSION {
        return fail(format!(
            "checking model.ie.json: format {} v{} is not {} v{}",
            m.format,
            m.version,
            format::FORMAT,
            format::VERSION
        ));
    }
    // A dtype's name stays when its layout changes (the fifth-bit planes of `q5_0_rows`, ADR
    // 27), so the layout note written with the pack must be this engine's.
    for (name, doc) in &m.layouts {
        let ours = name.parse::<Dtype>().ok().and_then(format::layout_doc);
        if ours.is_some_and(|ours| &ours != doc) {
            return fail(format!(
                "checking model.ie.json: its layout note for {name} is not the layout this engine reads (packed by another clocher-pack); pack the model again"
            ));
        }
    }
    if !format::SUPPORTED_ARCHITECTURES.contains(&m.architecture.as_str()) {
        return fail(format!(
            "checking model.ie.json: architecture {} is not supported (supported: {})",
            m.architecture,
            format::SUPPORTED_ARCHITECTURES.join(", ")
        ));
    }
    let c = &m.config;
    let dims = [
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
        ("head_dim", c.head_dim),
        ("vocab_size", c.vocab_size),
        ("max_position_embeddings", c.max_position_embeddings),
    ];
    if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
        return fail(format!("checking config: {name} is 0"));
    }
    if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
        return fail(format!(
            "checking config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
            c.num_attention_heads, c.num_key_value_heads
        ));
    }
    if !c.head_dim.is_multiple_of(2) {
        return fail(format!(
            "checking config: head_dim {} is odd (RoPE needs pairs)",
            c.head_dim
        ));
    }
    let expected = format::expected_tensors(c);
    for (name, shape) in &expected {
        let Some(t) = m.tensor(name) else {
            return fail(format!(
                "checking tensor {name}: missing from the tensor table"
            ));
        };
        if &t.shape != shape {
            return fail(format!(
                "checking tensor {name}: shape {:?} contradicts the config, which implies {:?}",
                t.shape, shape
            ));
        }
        if format::is_norm(name) && t.dtype != Dtype::F32 {
            return fail(format!(
                "checking tensor {name}: dtype {} but norm weights are stored as f32",
                t.dtype.name()
            ));
        }
        if let Some(want) = m.precision.dtype().filter(|_| !format::is_norm(name)) {
            if t.dtype != want {
                return fail(format!(
                    "checking tensor {name}: dtype {} but precision {} stores it as {}",
                    t.dtype.name(),
                    m.precision.name(),
                    want.name()
                ));
            }
        }
        let need = match t.dtype.nbytes(shape) {
            Ok(n) => n,
            Err(e) => return fail(format!("checking tensor {name}: {e}")),
        };
        if matches!(t.dtype, Dtype::Int8 | Dtype::Int4 { .. }) && t.quant.is_none() {
            return fail(format!(
                "checking tensor {name}: dtype {} without its quant record",
                t.dtype.name()
            ));
        }
        if t.nbytes != need as u64 {
            return fail(format!(
                "checking tensor {name}: {} bytes but shape {:?} of {} needs {need}",
                t.nbytes,
                t.shape,
                t.dtype.name()
            ));
        }
        if t.offset % format::ALIGN != 0
            || t.offset
                .checked_add(t.nbytes)
                .is_none_or(|e| e > m.blob.size)
        {
            return fail(format!(
                "checking tensor {name}: offset {} (+{} bytes) is unaligned or past the {}-byte blob",
                t.offset, t.nbytes, m.blob.size
            ));
        }
    }
    if let Some(t) = m
        .tensors
        .iter()
        .find(|t| !expected.iter().any(|(n, _)| n == &t.name))
    {
        return fail(format!(
            "checking tensor {}: not part of a {} model",
            t.name, m.architecture
        ));
    }
    parse_hash(&m.blob.xxh3)?;
    Ok(())
}

fn parse_hash(h: &str) -> Result<u64, CodegenError> {
    u64::from_str_radix(h, 16).or_else(|_| {
        fail(format!(
            "checking blob: xxh3 {h:?} is not a 64-bit hex number"
        ))
    })
}

fn usize_lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

/// Emits the `model` module for a validated `m`.
pub fn generate(
    m: &ModelMeta,
    paths: &Paths,
    embed_weights: bool,
) -> Result<TokenStream, CodegenError> {
    validate(m)?;
    let c = &m.config;
    let off = |name: &str| usize_lit(m.tensor(name).expect("validated").offset as usize);
    // The weight type of every tensor, as a path into clocher_engine::dtype.
    let ty = |name: &str| {
        let t = m.tensor(name).expect("validated");
        let cols = *t.shape.last().expect("validated");
        let id: TokenStream = dtype::type_name(t.dtype, cols)
            .parse()
            .expect("type names are Rust paths");
        quote!(::clocher_engine::dtype::#id)
    };
    let dims = quote!(DIM, INTER, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM);
    let layer_types: Vec<String> = (0..c.num_hidden_layers)
        .map(|l| {
            let kinds = format::LAYER_TENSORS
                .iter()
                .filter(|k| !k.ends_with("layernorm"));
            let tys = kinds.map(|k| ty(&format::layer_tensor_name(l, k)));
            quote!(Layer<#(#tys),*, #dims>).to_string()
        })
        .collect();
    let parse = |t: &String| t.parse::<TokenStream>().expect("generated tokens re-parse");
    // Blocks that all share weight types are a `Uniform` vector; mixed ones get a struct with
    // one field per block, so every block's formats are still compile-time types.
    let (layers_ty, layers_def) = if layer_types.windows(2).all(|w| w[0] == w[1]) {
        let t = parse(&layer_types[0]);
        (
            quote!(::clocher_engine::model::llama::Uniform<#t>),
            quote!(),
        )
    } else {
        let fields: Vec<_> = (0..layer_types.len())
            .map(|l| format_ident!("l{l}"))
            .collect();
        let tys: Vec<TokenStream> = layer_types.iter().map(parse).collect();
        let idx = (0..layer_types.len()).map(usize_lit);
        let idx2 = idx.clone();
        (
            quote!(Blocks),
            quote! {
                /// The blocks, each with its own weight types.
                pub struct Blocks { #(pub #fields: #tys),* }

                impl ::clocher_engine::model::llama::Layers<LAYERS> for Blocks {
                    const GEMM_Q8: bool = false #(|| <#tys>::GEMM_Q8)*;
                    fn bind(
                        blob: &'static [u8],
                        o: &[LayerOffsets; LAYERS],
                    ) -> ::std::result::Result<Self, ::clocher_engine::EngineError> {
                        Ok(Blocks { #(#fields: Layer::bind(blob, &o[#idx], #idx)?),* })
                    }
                    fn forward(
                        &self,
                        s: &mut ::clocher_engine::model::llama::LlamaState,
                        pool: &::clocher_engine::pool::Pool,
                        (pos, n, keep): (usize, usize, usize),
                        eps: f32,
                    ) {
                        #(self.#fields.forward(
                            #idx2,
                            s,
                            pool,
                            (pos, n, if #idx2 + 1 == LAYERS { keep } else { n }),
                            eps,
                        );)*
                    }
                }
            },
        )
    };
    let embed_ty = ty("model.embed_tokens.weight");
    let head_ty = ty(if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    });
    let layers = (0..c.num_hidden_layers).map(|l| {
        let o = |kind: &str| off(&format::layer_tensor_name(l, kind));
        let [an, q, k, v, o_, fnorm, g, u, d] = format::LAYER_TENSORS.map(o);
        quote! {
            LayerOffsets { attn_norm: #an, wq: #q, wk: #k, wv: #v, wo: #o_, ffn_norm: #fnorm, w_gate: #g, w_up: #u, w_down: #d }
        }
    });
    let embed = off("model.embed_tokens.weight");
    let norm = off("model.norm.weight");
    let lm_head = if c.tie_word_embeddings {
        quote!(None)
    } else {
        let o = off("lm_head.weight");
        quote!(Some(#o))
    };
    let [dim, inter, n_layers, heads, kv_heads, head_dim, vocab, context] = [
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        c.max_position_embeddings,
    ]
    .map(usize_lit);
    let q_dim = usize_lit(c.num_attention_heads * c.head_dim);
    let kv_dim = usize_lit(c.num_key_value_heads * c.head_dim);
    let (name, precision) = (&m.name, m.precision.name());
    let blob_size = Literal::u64_unsuffixed(m.blob.size);
    // A decoded token reads every tensor but the embedding, of which it reads one row, unless
    // the embedding is also the head.
    let table = m.tensor("model.embed_tokens.weight").expect("validated");
    let embed_unread = if c.tie_word_embeddings {
        0
    } else {
        table.nbytes - table.nbytes / table.shape[0] as u64
    };
    let bytes_per_token =
        Literal::u64_unsuffixed(m.tensors.iter().map(|t| t.nbytes).sum::<u64>() - embed_unread);
    let blob_hash = Literal::u64_unsuffixed(parse_hash(&m.blob.xxh3)?);
    let eps = Literal::f32_suffixed(c.rms_norm_eps as f32);
    let theta = Literal::f32_suffixed(c.rope_theta as f32);
    let t = &m.tokenizer;
    let opt_str = |s: &Option<String>| match s {
        Some(s) => quote!(Some(#s)),
        None => quote!(None),
    };
    let (chat, bos, eos) = (
        opt_str(&t.chat_template),
        opt_str(&t.bos_token),
        opt_str(&t.eos_token),
    );
    let eos_ids = &t.eos_token_ids;
    let bos_id = match t.bos_token_id {
        Some(id) => quote!(Some(#id)),
        None => quote!(None),
    };
    let add_bos = t.add_bos;
    let Paths {
        meta_json,
        model_dir,
        tokenizer_json,
        tokenizer_digest,
        blob,
    } = paths;
    let (blob_static, embedded) = if embed_weights {
        (
            quote! {
                /// The weights, compiled into the binary (`--embed-weights`).
                static BLOB: &::clocher_engine::runtime::Aligned<[u8]> =
                    &::clocher_engine::runtime::Aligned(*include_bytes!(#blob));
            },
            quote!(Some(&BLOB.0)),
        )
    } else {
        (quote!(), quote!(None))
    };
    Ok(quote! {
        /// Constants, types and glue baked from `model.ie.json` by `clocher_macros::model!`.
        pub mod model {
            use ::clocher_engine::model::llama::{Layer, LayerOffsets, Llama, LlamaOffsets};
            /// hidden_size
            pub const DIM: usize = #dim;
            /// intermediate_size
            pub const INTER: usize = #inter;
            pub const LAYERS: usize = #n_layers;
            pub const HEADS: usize = #heads;
            pub const KV_HEADS: usize = #kv_heads;
            pub const HEAD_DIM: usize = #head_dim;
            /// HEADS * HEAD_DIM
            pub const Q_DIM: usize = #q_dim;
            /// KV_HEADS * HEAD_DIM
            pub const KV_DIM: usize = #kv_dim;
            pub const VOCAB: usize = #vocab;
            /// max_position_embeddings
            pub const CONTEXT: usize = #context;
            const _: () = {
                assert!(Q_DIM == HEADS * HEAD_DIM);
                assert!(KV_DIM == KV_HEADS * HEAD_DIM);
                assert!(HEADS % KV_HEADS == 0);
            };

            #layers_def

            /// The model: embedding, head and block weight types, and every dimension.
            pub type Model = Llama<
                #embed_ty, #head_ty, #layers_ty,
                DIM, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, Q_DIM, KV_DIM, VOCAB, CONTEXT
            >;

            /// Byte offset of every tensor in model.ie.bin.
            pub const OFFSETS: LlamaOffsets<LAYERS> = LlamaOffsets {
                embed: #embed,
                layers: [#(#layers),*],
                norm: #norm,
                lm_head: #lm_head,
            };

            // Rebuild when the packed model changes.
            const _META: &str = include_str!(#meta_json);
            static TOKENIZER: &[u8] = include_bytes!(#tokenizer_json);
            static TOKENIZER_DIGEST: &[u8] = include_bytes!(#tokenizer_digest);
            #blob_static

            pub static INFO: ::clocher_engine::runtime::BakedInfo = ::clocher_engine::runtime::BakedInfo {
                name: #name,
                precision: #precision,
                model_dir: #model_dir,
                blob_size: #blob_size,
                bytes_per_token: #bytes_per_token,
                blob_xxh3: #blob_hash,
                embedded: #embedded,
                tokenizer_json: TOKENIZER,
                tokenizer_digest: TOKENIZER_DIGEST,
                chat_template: #chat,
                bos_token: #bos,
                bos_token_id: #bos_id,
                add_bos: #add_bos,
                eos_token: #eos,
                eos_token_ids: &[#(#eos_ids),*],
                rms_norm_eps: #eps,
                rope_theta: #theta,
            };

            /// Runs the binary's command line.
            pub fn main() -> ::std::process::ExitCode {
                ::clocher_engine::cli::main::<Model>(&INFO, &OFFSETS)
            }
        }
    })
}
