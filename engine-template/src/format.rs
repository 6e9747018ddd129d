//! IEBIN v1: `model.ie.json` (this schema) next to `model.ie.bin` (the tensor blob).
//!
//! Every tensor in the blob starts at a multiple of [`ALIGN`] bytes and is stored row-major
//! (`layout: "row_major"`), outermost dimension first, as in PyTorch / safetensors.

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "IEBIN";
pub const VERSION: u32 = 1;
/// Alignment of every tensor in `model.ie.bin`, in bytes (one cache line, and enough for AVX-512 loads).
pub const ALIGN: u64 = 64;
pub const BLOB_FILE: &str = "model.ie.bin";
pub const META_FILE: &str = "model.ie.json";
pub const VOCAB_FILE: &str = "vocab.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Architectures the packer and runtime support, by their Hugging Face class name.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM"];

/// Element type of a stored tensor: a float type or a GGUF block format.
pub use crate::kernels::blocks::GgmlType as Dtype;

/// Weight precision of a whole model, as the user names it (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
    /// Every tensor keeps the format it has in the GGUF file (blocks byte for byte).
    Gguf,
}

impl Precision {
    /// The dtype of every linear layer and the embedding; `None` for `Gguf` (per tensor).
    pub fn dtype(self) -> Option<Dtype> {
        match self {
            Precision::Fp32 => Some(Dtype::F32),
            Precision::Bf16 => Some(Dtype::BF16),
            Precision::Fp16 => Some(Dtype::F16),
            Precision::Gguf => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Gguf => "gguf",
        }
    }
}

/// The Llama-family hyper-parameters, with Hugging Face's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
}

/// One row of the tensor table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// Outermost dimension first (PyTorch order).
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    /// Byte offset into `model.ie.bin`; a multiple of [`ALIGN`].
    pub offset: u64,
    pub nbytes: u64,
    /// Always `"row_major"` in v1.
    pub layout: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// File next to `model.ie.json` holding the Hugging Face tokenizer (`tokenizer.json`).
    pub file: String,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    /// The tokenizer's post-processor already adds BOS when this is true; recorded for readers.
    pub add_bos: bool,
    pub chat_template: Option<String>,
    /// Token strings the chat template refers to as `bos_token` / `eos_token`.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `"safetensors"` or `"gguf"`.
    pub kind: String,
    pub path: String,
    /// Element types found in the source, e.g. `["bf16"]` or `["f32", "q4_1", "q8_0"]`.
    pub dtypes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub file: String,
    pub size: u64,
    /// xxh3-64 of the whole blob, lower-case hex.
    pub xxh3: String,
}

/// `model.ie.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub name: String,
    pub architecture: String,
    pub precision: Precision,
    pub config: LlamaConfig,
    pub tensors: Vec<TensorEntry>,
    pub tokenizer: TokenizerInfo,
    pub source: SourceInfo,
    pub blob: BlobInfo,
}

impl ModelMeta {
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The nine per-layer tensors of a Llama block, in Hugging Face naming.
pub const LAYER_TENSORS: [&str; 9] = [
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

pub fn layer_tensor_name(layer: usize, kind: &str) -> String {
    format!("model.layers.{layer}.{kind}.weight")
}

/// Every tensor a Llama checkpoint with this config holds, with its expected shape.
/// Norm weights are 1-D; linear weights are `[out_features, in_features]`.
pub fn expected_tensors(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, q, kv, ff) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, d],
    )];
    for l in 0..c.num_hidden_layers {
        let shapes: [Vec<usize>; 9] = [
            vec![d],
            vec![q, d],
            vec![kv, d],
            vec![kv, d],
            vec![d, q],
            vec![d],
            vec![ff, d],
            vec![ff, d],
            vec![d, ff],
        ];
        for (kind, shape) in LAYER_TENSORS.iter().zip(shapes) {
            v.push((layer_tensor_name(l, kind), shape));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![d]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size, d]));
    }
    v
}

/// True for 1-D norm weights, which IEBIN v1 always stores as f32 whatever the precision.
pub fn is_norm(name: &str) -> bool {
    name.ends_with("layernorm.weight") || name == "model.norm.weight"
}
