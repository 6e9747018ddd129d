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
/// Written by a generated binary beside the blob once its hash matched (ADR 34).
pub const STAMP_FILE: &str = "model.ie.verified";
pub const VOCAB_FILE: &str = "vocab.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Architectures the packer and runtime support, by their Hugging Face class name.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM"];

use crate::kernels::blocks::GgmlType;
use crate::kernels::int::{self, Clip, Scheme};
use crate::kernels::rows;

/// Element type of a stored tensor: a float type, a GGUF block format (Q4_0, Q4_1, Q5_0 and
/// Q5_1 stored split by field within each row, [`crate::kernels::rows`]), or one of Clocher's
/// weight-only
/// integer formats (layouts in [`crate::kernels::int`] and, per model, in `model.ie.json`'s
/// `layouts`). Written as a lower-case name: `"f32"`, `"q4_1"`, `"q5_0_rows"`, `"int8"`,
/// `"int4_g32"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Dtype {
    Ggml(GgmlType),
    /// GGUF blocks of a format that [`rows::fields`] lists, split by field within each row.
    Rows(GgmlType),
    /// Int8 rows: `d: f32, m: f32, qs: [u8; cols]`.
    Int8,
    /// Int4 rows with groups of `group` weights.
    Int4 {
        group: usize,
    },
}

impl Dtype {
    pub const F32: Dtype = Dtype::Ggml(GgmlType::F32);
    pub const F16: Dtype = Dtype::Ggml(GgmlType::F16);
    pub const BF16: Dtype = Dtype::Ggml(GgmlType::BF16);

    pub fn name(self) -> String {
        match self {
            Dtype::Ggml(t) => t.name().to_ascii_lowercase(),
            Dtype::Rows(t) => format!("{}_rows", t.name().to_ascii_lowercase()),
            Dtype::Int8 => "int8".into(),
            Dtype::Int4 { group } => format!("int4_g{group}"),
        }
    }

    /// Bytes of one row of `cols` elements, or why such a row can't be stored.
    pub fn row_bytes(self, cols: usize) -> Result<usize, String> {
        match self {
            Dtype::Ggml(t) | Dtype::Rows(t) => t.nbytes(cols).ok_or_else(|| {
                format!(
                    "rows of {cols} don't divide into {}-element {} blocks",
                    t.block_elems(),
                    t.name()
                )
            }),
            Dtype::Int8 => Ok(int::int8_row_bytes(cols)),
            Dtype::Int4 { group } => match int::int4_group_error(cols, group) {
                Some(e) => Err(e),
                None => Ok(int::int4_row_bytes(cols, group)),
            },
        }
    }

    /// Bytes of a tensor of `shape` (its last dimension is the row).
    pub fn nbytes(self, shape: &[usize]) -> Result<usize, String> {
        let cols = *shape.last().unwrap_or(&1);
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        Ok(rows * self.row_bytes(cols)?)
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "int8" {
            return Ok(Dtype::Int8);
        }
        if let Some(g) = s.strip_prefix("int4_g") {
            return g
                .parse()
                .map(|group| Dtype::Int4 { group })
                .map_err(|_| format!("dtype {s:?}: bad group size"));
        }
        let ggml = |s: &str| {
            GgmlType::ALL
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(s))
        };
        match s.strip_suffix("_rows") {
            Some(b) => ggml(b)
                .filter(|t| rows::fields(*t).is_some())
                .map(Dtype::Rows),
            None => ggml(s).map(Dtype::Ggml),
        }
        .ok_or_else(|| format!("unknown dtype {s:?}"))
    }
}
impl TryFrom<String> for Dtype {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<Dtype> for String {
    fn from(d: Dtype) -> String {
        d.name()
    }
}

/// Weight precision of a whole model, as the user names it (`clocher-pack --precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "runtime", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
    /// Keep every tensor's stored format (GGUF blocks byte for byte).
    Gguf,
    /// Weight-only INT8, per-row min-max scales (or as a --q4-map manifest says).
    Int8w,
    /// Weight-only INT4 linear layers, groups of 32 (or as a --q4-map manifest says).
    Int4w,
}

impl Precision {
    /// The dtype of every linear layer and the embedding; `None` where it is chosen per tensor.
    pub fn dtype(self) -> Option<Dtype> {
        match self {
            Precision::Fp32 => Some(Dtype::F32),
            Precision::Bf16 => Some(Dtype::BF16),
            Precision::Fp16 => Some(Dtype::F16),
            Precision::Gguf | Precision::Int8w | Precision::Int4w => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Gguf => "gguf",
            Precision::Int8w => "int8w",
            Precision::Int4w => "int4w",
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
    /// How an `int8` / `int4_g*` tensor was quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantSpec>,
}

/// Which weights share a scale: the whole tensor (int8), each row, or groups of N weights
/// within a row (int4). Written as `"tensor"`, `"row"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GroupRepr", into = "GroupRepr")]
pub enum GroupSize {
    Tensor,
    Row,
    Size(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum GroupRepr {
    N(usize),
    S(String),
}
impl TryFrom<GroupRepr> for GroupSize {
    type Error = String;
    fn try_from(r: GroupRepr) -> Result<Self, String> {
        match r {
            GroupRepr::N(n) => Ok(GroupSize::Size(n)),
            GroupRepr::S(s) => s.parse(),
        }
    }
}
impl From<GroupSize> for GroupRepr {
    fn from(g: GroupSize) -> GroupRepr {
        match g {
            GroupSize::Tensor => GroupRepr::S("tensor".into()),
            GroupSize::Row => GroupRepr::S("row".into()),
            GroupSize::Size(n) => GroupRepr::N(n),
        }
    }
}
impl std::str::FromStr for GroupSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensor" => Ok(GroupSize::Tensor),
            "row" => Ok(GroupSize::Row),
            _ => s
                .parse()
                .map(GroupSize::Size)
                .map_err(|_| format!("group size {s:?} is not a number, row or tensor")),
        }
    }
}

/// How one tensor is quantized: recorded in `model.ie.json` and in `q4_manifest.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    /// 4 or 8.
    pub bits: u8,
    pub group_size: GroupSize,
    pub scheme: Scheme,
    pub clip: Clip,
}

impl QuantSpec {
    /// The stored dtype for rows of `cols`, or why this spec can't store them.
    pub fn dtype(&self, cols: usize) -> Result<Dtype, String> {
        match (self.bits, self.group_size) {
            (8, GroupSize::Tensor | GroupSize::Row) => Ok(Dtype::Int8),
            (8, GroupSize::Size(n)) => Err(format!("int8 takes group size row or tensor, not {n}")),
            (4, GroupSize::Tensor) => Err("int4 takes a group size or row, not tensor".into()),
            (4, g) => {
                let group = match g {
                    GroupSize::Size(n) => n,
                    _ => cols,
                };
                let d = Dtype::Int4 { group };
                d.row_bytes(cols).map(|_| d)
            }
            (b, _) => Err(format!("bits {b} is neither 4 nor 8")),
        }
    }

    /// Quantizes a row-major matrix with rows of `cols`.
    pub fn quantize(&self, w: &[f32], cols: usize) -> Result<Vec<u8>, String> {
        match self.dtype(cols)? {
            Dtype::Int8 => int::quantize_int8(
                w,
                cols,
                self.group_size == GroupSize::Tensor,
                self.scheme,
                self.clip,
            ),
            Dtype::Int4 { group } => int::quantize_int4(w, cols, group, self.scheme, self.clip),
            Dtype::Ggml(_) | Dtype::Rows(_) => unreachable!("QuantSpec::dtype gives int types"),
        }
    }
}

/// Layout notes `model.ie.json` carries for each integer dtype it uses.
pub fn layout_doc(d: Dtype) -> Option<String> {
    match d {
        Dtype::Int8 => Some(
            "int8: each row is d (f32 LE), m (f32 LE), then one u8 code per weight; weight j = d * qs[j] + m. Sym stores m = -128 d; per-tensor scales repeat the tensor's d and m in every row.".into(),
        ),
        Dtype::Int4 { group } => Some(format!(
            "int4_g{group}: each row is d (bf16 LE), dmin (bf16 LE), scales[cols/{group}] (u8), mins[cols/{group}] (u8), then qs[cols/2]: group g of {group} weights is bytes qs[g*{h}..(g+1)*{h}], byte i holding weight g*{group}+i in its low nibble and weight g*{group}+{h}+i in its high nibble (ggml's order; no other interleaving). Weight = d * scales[g] * q - dmin * mins[g]. Sym stores dmin = 8 d and mins = scales (weight = d * scales[g] * (q - 8)).",
            h = group / 2
        )),
        Dtype::Rows(t) => Some(format!(
            "{n}_rows: ggml's {n} blocks, each row's fields gathered into arrays in block order: {}. Block k is field[k] of each; bytes and values as in ggml.",
            rows::fields(t)
                .unwrap_or_default()
                .iter()
                .map(|f| format!("{}[nb] ({})", f.name, f.ty))
                .collect::<Vec<_>>()
                .join(", "),
            n = t.name().to_ascii_lowercase()
        )),
        Dtype::Ggml(_) => None,
    }
}

/// How a GGUF format is stored: split by rows where [`rows::fields`] lists it.
pub fn stored(t: GgmlType) -> Dtype {
    match rows::fields(t) {
        Some(_) => Dtype::Rows(t),
        None => Dtype::Ggml(t),
    }
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
    /// For each integer dtype used, how its bytes are laid out (see [`layout_doc`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub layouts: std::collections::BTreeMap<String, String>,
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
