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
/// `tokenizer.json`'s BPE vocabulary and merges in binary, for a fast load ([`TokenDigest`],
/// ADR 38); empty where the tokenizer is not a BPE model it can hold.
pub const TOKENIZER_DIGEST_FILE: &str = "tokenizer.bin";
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
/// `"int4_g64"`, `"int4_g32_lanes"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Dtype {
    Ggml(GgmlType),
    /// GGUF blocks of a format that [`rows::fields`] lists, split by field within each row.
    Rows(GgmlType),
    /// [`Dtype::Rows`] of Q4_0 or Q4_1 ([`rows::lanes_ok`]) with each row's `qs` in the lane
    /// layout ([`int::qs_to_lanes`], ADR 45).
    RowsLanes(GgmlType),
    /// Int8 rows: `d: f32, m: f32, qs: [u8; cols]`.
    Int8,
    /// Int4 rows with groups of `group` weights; with `lanes` (groups of 32 only), each run of
    /// eight groups' nibbles in the lane layout ([`int::int4_to_lanes`], ADR 44).
    Int4 {
        group: usize,
        lanes: bool,
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
            Dtype::RowsLanes(t) => format!("{}_rows_lanes", t.name().to_ascii_lowercase()),
            Dtype::Int8 => "int8".into(),
            Dtype::Int4 { group, lanes } => {
                format!("int4_g{group}{}", if lanes { "_lanes" } else { "" })
            }
        }
    }

    /// Bytes of one row of `cols` elements, or why such a row can't be stored.
    pub fn row_bytes(self, cols: usize) -> Result<usize, String> {
        match self {
            Dtype::Ggml(t) | Dtype::Rows(t) | Dtype::RowsLanes(t) => {
                t.nbytes(cols).ok_or_else(|| {
                    format!(
                        "rows of {cols} don't divide into {}-element {} blocks",
                        t.block_elems(),
                        t.name()
                    )
                })
            }
            Dtype::Int8 => Ok(int::int8_row_bytes(cols)),
            Dtype::Int4 { group, .. } => match int::int4_group_error(cols, group) {
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
            let (g, lanes) = match g.strip_suffix("_lanes") {
                Some(g) => (g, true),
                None => (g, false),
            };
            return match g.parse() {
                Ok(group) if lanes && group != int::LANE_GROUP => Err(format!(
                    "dtype {s:?}: the lane layout takes groups of {}",
                    int::LANE_GROUP
                )),
                Ok(group) => Ok(Dtype::Int4 { group, lanes }),
                Err(_) => Err(format!("dtype {s:?}: bad group size")),
            };
        }
        let ggml = |s: &str| {
            GgmlType::ALL
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(s))
        };
        if let Some(b) = s.strip_suffix("_rows_lanes") {
            return ggml(b)
                .filter(|t| rows::lanes_ok(*t))
                .map(Dtype::RowsLanes)
                .ok_or_else(|| format!("unknown dtype {s:?}"));
        }
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
                // New packs put groups of 32 in the lane layout: the 8-bit decode kernel over
                // it streams 15-23% more bytes a second (ADR 43, 44).
                let lanes = group == int::LANE_GROUP;
                let d = Dtype::Int4 { group, lanes };
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
            Dtype::Int4 { group, lanes } => {
                let mut q = int::quantize_int4(w, cols, group, self.scheme, self.clip)?;
                if lanes {
                    int::int4_to_lanes(&mut q, cols);
                }
                Ok(q)
            }
            Dtype::Ggml(_) | Dtype::Rows(_) | Dtype::RowsLanes(_) => {
                unreachable!("QuantSpec::dtype gives int types")
            }
        }
    }
}

/// Layout notes `model.ie.json` carries for each integer dtype it uses.
pub fn layout_doc(d: Dtype) -> Option<String> {
    match d {
        Dtype::Int8 => Some(
            "int8: each row is d (f32 LE), m (f32 LE), then one u8 code per weight; weight j = d * qs[j] + m. Sym stores m = -128 d; per-tensor scales repeat the tensor's d and m in every row.".into(),
        ),
        Dtype::Int4 { group, lanes } => Some(format!(
            "{}: each row is d (bf16 LE), dmin (bf16 LE), scales[cols/{group}] (u8), mins[cols/{group}] (u8), then qs[cols/2]: group g of {group} weights is bytes qs[g*{h}..(g+1)*{h}], byte i holding weight g*{group}+i in its low nibble and weight g*{group}+{h}+i in its high nibble (ggml's order){}. Weight = d * scales[g] * q - dmin * mins[g]. Sym stores dmin = 8 d and mins = scales (weight = d * scales[g] * (q - 8)).",
            Dtype::Int4 { group, lanes }.name(),
            if lanes {
                ", except in the lane layout: in each whole run of 8 groups (128 bytes from qs[128*R]), byte 32*L+4*j+i holds weight 8*L+i of group 8*R+j in its low nibble and weight 8*L+4+i in its high nibble (L < 4, j < 8, i < 4); groups past the last whole run keep ggml's order"
            } else {
                "; no other interleaving"
            },
            h = group / 2
        )),
        Dtype::Rows(t) | Dtype::RowsLanes(t) => Some(format!(
            "{}: ggml's {n} blocks, each row's fields gathered into arrays in block order: {}. Block k is field[k] of each; bytes and values as in ggml{}.",
            d.name(),
            rows::fields(t)
                .unwrap_or_default()
                .iter()
                .map(|f| format!("{}[nb] ({})", f.name, f.ty))
                .collect::<Vec<_>>()
                .join(", "),
            if matches!(d, Dtype::RowsLanes(_)) {
                ", except that qs is in the lane layout: in each whole run of 8 blocks (128 bytes from qs[128*R]), byte 32*L+4*j+i holds element 8*L+i of block 8*R+j in its low nibble and element 8*L+4+i in its high nibble (L < 4, j < 8, i < 4); blocks past the last whole run keep ggml's order"
            } else {
                ""
            },
            n = t.name().to_ascii_lowercase()
        )),
        Dtype::Ggml(_) => None,
    }
}

/// How a GGUF format is stored: split by rows where [`rows::fields`] lists it, the 4-bit ones
/// with their nibbles in the lane layout (ADR 45).
pub fn stored(t: GgmlType) -> Dtype {
    match rows::fields(t) {
        Some(_) if rows::lanes_ok(t) => Dtype::RowsLanes(t),
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

/// The first bytes of a [`TokenDigest`].
const DIGEST_MAGIC: &[u8; 8] = b"CLTOKv1\n";

/// A BPE `tokenizer.json` as the binaries load it fastest (ADR 38): the document with its
/// model's vocabulary and merges emptied (`rest`), the vocabulary as (id, token) entries, and
/// the merges as pairs of tokens, each section read front to back with no JSON string in it
/// (reading the merges by index into the vocabulary cost a cache miss a token). Laid out,
/// little-endian: the magic `CLTOKv1\n`; `u32` length and the bytes of `rest`; `u32` the
/// longest token's length in bytes; then the vocabulary and the merges, each as a `u32` count
/// and a `u32` length in bytes followed by that many bytes: per entry `u32` id, `u16` length
/// and the token, per merge `u16` length and the first token, `u16` length and the second. The
/// packer writes it beside `tokenizer.json` ([`TokenDigest::encode`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenDigest<'a> {
    pub rest: &'a str,
    /// The longest token, in bytes.
    pub longest: usize,
    vocab: (usize, &'a [u8]),
    merges: (usize, &'a [u8]),
}

impl<'a> TokenDigest<'a> {
    /// The digest of a BPE `tokenizer.json`; `None` for another model type or a document it
    /// cannot hold (a token of 64 KiB or more, a merge that is not two tokens).
    pub fn encode(json: &str) -> Option<Vec<u8>> {
        use serde_json::Value;
        let mut doc: Value = serde_json::from_str(json).ok()?;
        let model = doc.get_mut("model")?.as_object_mut()?;
        if model.get("type")?.as_str()? != "BPE" {
            return None;
        }
        let vocab = std::mem::take(model.get_mut("vocab")?.as_object_mut()?);
        let merges = std::mem::take(model.get_mut("merges")?.as_array_mut()?);
        let rest = serde_json::to_string(&doc).ok()?;
        let u32_of = |n: usize| Some(u32::try_from(n).ok()?.to_le_bytes());
        let token = |out: &mut Vec<u8>, t: &str| -> Option<()> {
            out.extend_from_slice(&u16::try_from(t.len()).ok()?.to_le_bytes());
            out.extend_from_slice(t.as_bytes());
            Some(())
        };
        let mut entries = vec![];
        for (t, id) in &vocab {
            entries.extend_from_slice(&u32_of(usize::try_from(id.as_u64()?).ok()?)?);
            token(&mut entries, t)?;
        }
        let mut pairs = vec![];
        for m in &merges {
            let (a, b) = match m {
                Value::String(s) => split_merge(s)?,
                Value::Array(p) if p.len() == 2 => (p[0].as_str()?, p[1].as_str()?),
                _ => return None,
            };
            token(&mut pairs, a)?;
            token(&mut pairs, b)?;
        }
        let longest = vocab.keys().map(String::len).max().unwrap_or(0);
        let mut out = DIGEST_MAGIC.to_vec();
        out.extend_from_slice(&u32_of(rest.len())?);
        out.extend_from_slice(rest.as_bytes());
        out.extend_from_slice(&u32_of(longest)?);
        for (n, bytes) in [(vocab.len(), entries), (merges.len(), pairs)] {
            out.extend_from_slice(&u32_of(n)?);
            out.extend_from_slice(&u32_of(bytes.len())?);
            out.extend_from_slice(&bytes);
        }
        Some(out)
    }

    /// Reads a digest's layout; `None` if `bytes` is empty (no digest) or not one. The entries
    /// are checked as they are read ([`TokenDigest::vocab`], [`TokenDigest::merges`]).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut r = bytes.strip_prefix(DIGEST_MAGIC.as_slice())?;
        let n = take_u32(&mut r)? as usize;
        let rest = std::str::from_utf8(take(&mut r, n)?).ok()?;
        let longest = take_u32(&mut r)? as usize;
        let mut section = || -> Option<(usize, &'a [u8])> {
            let n = take_u32(&mut r)? as usize;
            let len = take_u32(&mut r)? as usize;
            Some((n, take(&mut r, len)?))
        };
        let (vocab, merges) = (section()?, section()?);
        r.is_empty().then_some(TokenDigest {
            rest,
            longest,
            vocab,
            merges,
        })
    }

    /// The vocabulary's (token, id) entries, in `tokenizer.json`'s order; a `None` item where
    /// the section is damaged (then the last).
    pub fn vocab(&self) -> impl Iterator<Item = Option<(&'a str, u32)>> + 'a {
        self.vocab_bytes()
            .map(|e| e.and_then(|(t, id)| Some((std::str::from_utf8(t).ok()?, id))))
    }

    /// [`TokenDigest::vocab`] with the tokens' bytes not yet checked as UTF-8.
    pub fn vocab_bytes(&self) -> impl Iterator<Item = Option<(&'a [u8], u32)>> + 'a {
        entries(self.vocab, |r| {
            let id = take_u32(r)?;
            Some((take_bytes(r)?, id))
        })
    }

    /// The merges, in order; a `None` item where the section is damaged (then the last).
    pub fn merges(&self) -> impl Iterator<Item = Option<(&'a str, &'a str)>> + 'a {
        self.merge_bytes().map(|m| {
            let (a, b) = m?;
            Some((std::str::from_utf8(a).ok()?, std::str::from_utf8(b).ok()?))
        })
    }

    /// [`TokenDigest::merges`] with the tokens' bytes not yet checked as UTF-8, for a reader
    /// that uses few of them.
    pub fn merge_bytes(&self) -> impl Iterator<Item = Option<(&'a [u8], &'a [u8])>> + 'a {
        entries(self.merges, |r| Some((take_bytes(r)?, take_bytes(r)?)))
    }

    pub fn merge_count(&self) -> usize {
        self.merges.0
    }
}

/// `n` items read from `bytes` by `read`, which must use them all; a `None` item, the last,
/// where one can't be read or bytes are left over.
fn entries<'a, T: 'a>(
    (n, mut bytes): (usize, &'a [u8]),
    read: impl Fn(&mut &'a [u8]) -> Option<T> + 'a,
) -> impl Iterator<Item = Option<T>> + 'a {
    let mut left = Some(n);
    std::iter::from_fn(move || {
        let item = match left? {
            0 if bytes.is_empty() => return None,
            0 => None,
            _ => read(&mut bytes),
        };
        left = match item {
            Some(_) => left.map(|l| l - 1),
            None => None,
        };
        Some(item)
    })
}

fn take<'b>(r: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
    let (head, tail) = r.split_at_checked(n)?;
    *r = tail;
    Some(head)
}

fn take_u32(r: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(r, 4)?.try_into().ok()?))
}

fn take_bytes<'b>(r: &mut &'b [u8]) -> Option<&'b [u8]> {
    let n = u16::from_le_bytes(take(r, 2)?.try_into().ok()?) as usize;
    take(r, n)
}

/// The two tokens of a merge rule in its older form, `"a b"`.
pub fn split_merge(s: &str) -> Option<(&str, &str)> {
    let mut parts = s.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => Some((a, b)),
        _ => None,
    }
}

#[cfg(test)]
mod digest_tests {
    use super::TokenDigest;

    const DOC: &str = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "é": 3},
        "merges": [["a", "b"], "b a"]}, "added_tokens": []}"#;

    /// A digest's vocabulary and merges, read whole.
    type Read<'a> = (Vec<(&'a str, u32)>, Vec<(&'a str, &'a str)>);

    fn read(bytes: &[u8]) -> Option<Read<'_>> {
        let d = TokenDigest::parse(bytes)?;
        Some((
            d.vocab().collect::<Option<_>>()?,
            d.merges().collect::<Option<_>>()?,
        ))
    }

    #[test]
    fn round_trip() {
        let bytes = TokenDigest::encode(DOC).unwrap();
        let d = TokenDigest::parse(&bytes).unwrap();
        let (mut vocab, merges) = read(&bytes).unwrap();
        vocab.sort_by_key(|v| v.1);
        assert_eq!(vocab, [("a", 0), ("b", 1), ("ab", 2), ("é", 3)]);
        assert_eq!(merges, [("a", "b"), ("b", "a")]);
        assert_eq!((d.merge_count(), d.longest), (2, 2));
        let rest: serde_json::Value = serde_json::from_str(d.rest).unwrap();
        assert_eq!(rest["model"]["vocab"], serde_json::json!({}));
        assert_eq!(rest["model"]["merges"], serde_json::json!([]));
        assert_eq!(rest["added_tokens"], serde_json::json!([]));
    }

    #[test]
    fn no_digest_for_what_it_cannot_hold() {
        let long = "x".repeat(1 << 16);
        for doc in [
            r#"{"model": {"type": "WordLevel", "vocab": {"a": 0}}}"#.to_string(),
            r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a a"]}}"#.into(),
            format!(r#"{{"model": {{"type": "BPE", "vocab": {{"{long}": 0}}, "merges": []}}}}"#),
            "not json".into(),
        ] {
            assert_eq!(
                TokenDigest::encode(&doc),
                None,
                "{}",
                &doc[..40.min(doc.len())]
            );
        }
    }

    /// Every truncation, counts that don't match the bytes, bad UTF-8 and trailing bytes are
    /// refused, without a panic or an allocation by a count.
    #[test]
    fn damaged_digests_are_refused() {
        let bytes = TokenDigest::encode(DOC).unwrap();
        assert_eq!(TokenDigest::parse(&[]), None);
        for n in 0..bytes.len() {
            assert_eq!(read(&bytes[..n]), None, "cut at {n}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(read(&extra), None, "trailing byte");
        // The vocabulary's count, after the magic, `rest` and the longest token's length.
        let rest_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let at = 16 + rest_len;
        for count in [0, 3, 5, u32::MAX] {
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&count.to_le_bytes());
            assert_eq!(read(&bad), None, "vocabulary count {count} for 4 entries");
        }
        let mut utf8 = bytes.clone();
        let e = utf8.windows(2).rposition(|w| w == "é".as_bytes()).unwrap();
        utf8[e] = 0xff;
        assert_eq!(read(&utf8), None, "a token that is not UTF-8");
    }
}

#[cfg(test)]
mod dtype_tests {
    use super::{Dtype, GgmlType as Gt};
    use crate::dtype::type_name;

    /// Every stored name parses back to its dtype, old layouts beside the lane ones (ADR 44,
    /// 45), and the generated types tell them apart.
    #[test]
    fn names_round_trip_and_lane_layouts_are_their_own_types() {
        let all = [
            (
                Dtype::Int4 {
                    group: 32,
                    lanes: false,
                },
                "int4_g32",
                "Int4<32, 18, 288>",
            ),
            (
                Dtype::Int4 {
                    group: 32,
                    lanes: true,
                },
                "int4_g32_lanes",
                "Int4Lanes<18, 288>",
            ),
            (
                Dtype::Int4 {
                    group: 64,
                    lanes: false,
                },
                "int4_g64",
                "Int4<64, 9, 288>",
            ),
            (Dtype::Rows(Gt::Q4_1), "q4_1_rows", "Q4_1Rows<18>"),
            (
                Dtype::RowsLanes(Gt::Q4_1),
                "q4_1_rows_lanes",
                "Q4_1RowsLanes<18>",
            ),
            (
                Dtype::RowsLanes(Gt::Q4_0),
                "q4_0_rows_lanes",
                "Q4_0RowsLanes<18>",
            ),
            (Dtype::Rows(Gt::Q5_1), "q5_1_rows", "Q5_1Rows<18>"),
        ];
        for (d, name, ty) in all {
            assert_eq!(d.name(), name);
            assert_eq!(name.parse::<Dtype>(), Ok(d), "{name}");
            assert_eq!(type_name(d, 576), ty, "{name}");
        }
        for bad in [
            "int4_g64_lanes",
            "q5_0_rows_lanes",
            "q8_0_rows_lanes",
            "int4_gx_lanes",
        ] {
            assert!(bad.parse::<Dtype>().is_err(), "{bad} parsed");
        }
    }
}
