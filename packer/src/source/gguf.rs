//! GGUF v2/v3 files of the `llama` architecture.
//!
//! The reader trusts nothing: every length and count is checked against the bytes left before
//! anything is allocated for it, and every tensor's extent against the file's size.

use super::{Checkpoint, GgmlType, SrcTensor};
use crate::error::{input, io, Result};
use clocher_engine::format::{LlamaConfig, TokenizerInfo};
use memmap2::Mmap;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// A metadata value.
#[derive(Debug, Clone)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Uint(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's entry in the GGUF header (dims innermost first, as GGUF stores them).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

/// The parsed header of a GGUF file.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "truncated: needs {n} bytes at offset {}, {} left",
                self.pos,
                self.left()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A count of items each at least `min_size` bytes: rejected if the rest of the file can't hold them.
    fn count(&mut self, what: &str, min_size: usize) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n.saturating_mul(min_size as u64) > self.left() as u64 {
            return Err(format!(
                "{what} {n} at offset {} is larger than the file allows",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.count("string length", 1)?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("string at offset {} is not UTF-8", self.pos - n))
    }
    fn value(&mut self, ty: u32, depth: u32) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::Uint(self.take(1)?[0] as u64),
            1 => Value::Int(self.take(1)?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deeply".into());
                }
                let ety = self.u32()?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("unknown metadata array type {t}")),
                };
                let n = self.count("array length", min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

/// ggml's name for a type id (also for types this release can't read).
pub fn type_name(id: u32) -> String {
    if let Some(t) = GgmlType::from_id(id) {
        return t.name().into();
    }
    const OTHERS: &[(u32, &str)] = &[
        (9, "Q8_1"),
        (10, "Q2_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
    ];
    OTHERS
        .iter()
        .find(|(i, _)| *i == id)
        .map_or_else(|| format!("type{id}"), |(_, n)| n.to_string())
}

fn src_type(id: u32) -> std::result::Result<GgmlType, String> {
    GgmlType::from_id(id).ok_or_else(|| match type_name(id) {
        n if n.starts_with("type") => format!("unknown tensor type id {id}"),
        n => format!("tensor type {n} is not supported"),
    })
}

pub fn parse_header(buf: &[u8]) -> std::result::Result<Header, String> {
    let mut c = Cursor { buf, pos: 0 };
    if c.take(4)
        .map_err(|_| "not a GGUF file (too short)".to_string())?
        != b"GGUF"
    {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    // Smallest tensor info: 8-byte name length + 4 n_dims + 4 type + 8 offset.
    let n_tensors = c.count("tensor count", 24)?;
    let n_kv = c.count("metadata count", 13)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let v = c.value(ty, 0).map_err(|e| format!("metadata {key}: {e}"))?;
        metadata.insert(key, v);
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!(
                "tensor {name}: {n_dims} dimensions (1 to 4 allowed)"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let type_id = c.u32()?;
        let offset = c.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            type_id,
            offset,
        });
    }
    let align = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(32);
    if align == 0 || !align.is_power_of_two() || align > 1 << 20 {
        return Err(format!(
            "general.alignment {align} is not a sane power of two"
        ));
    }
    let data_start = c.pos.div_ceil(align as usize) * align as usize;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start,
    })
}

/// The fuzz target's body: parse `data` as a GGUF header and check every tensor's extent and
/// type the way [`open`] does. Any outcome but a panic is fine.
pub fn fuzz_one(data: &[u8]) {
    if let Ok(h) = parse_header(data) {
        let _ = tensor_extents(&h, data.len());
    }
}

/// Type and byte range of every tensor, checked against the file's length and block sizes.
pub fn tensor_extents(
    h: &Header,
    file_len: usize,
) -> std::result::Result<Vec<(GgmlType, std::ops::Range<usize>)>, String> {
    let data_len = file_len.saturating_sub(h.data_start) as u64;
    h.tensors
        .iter()
        .map(|t| {
            let ty = src_type(t.type_id).map_err(|e| format!("tensor {}: {e}", t.name))?;
            let (blk, blk_bytes) = (ty.block_elems(), ty.block_bytes());
            let numel = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let nbytes = numel
                .filter(|_| t.dims[0] % blk as u64 == 0)
                .and_then(|n| (n / blk as u64).checked_mul(blk_bytes as u64))
                .ok_or_else(|| {
                    format!(
                        "tensor {}: dims {:?} don't divide into {}-element blocks",
                        t.name, t.dims, blk
                    )
                })?;
            if t.offset
                .checked_add(nbytes)
                .is_none_or(|end| end > data_len)
            {
                return Err(format!(
                    "tensor {}: {} bytes at data offset {} run past the end of the file",
                    t.name, nbytes, t.offset
                ));
            }
            let start = h.data_start + t.offset as usize;
            Ok((ty, start..start + nbytes as usize))
        })
        .collect()
}

/// HF name of a GGUF llama tensor.
fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, kind) = rest.split_once('.')?;
            let kind = kind.strip_suffix(".weight")?;
            let hf = match kind {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{}.{hf}.weight", layer.parse::<usize>().ok()?)
        }
    })
}

pub fn open(path: &Path) -> Result<Checkpoint> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: read-only mapping; the packer only reads it while packing.
    let map = unsafe { Mmap::map(&file) }.map_err(io(path))?;
    let h = parse_header(&map).map_err(|e| input(path, e))?;
    let md = &h.metadata;
    let get = |k: &str| md.get(k);
    let arch = get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("<none>")
        .to_string();
    if arch != "llama" {
        return Err(input(
            path,
            format!("unsupported architecture {arch} (supported: llama)"),
        ));
    }
    let num = |k: &str| -> Result<usize> {
        get(&format!("llama.{k}"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| input(path, format!("missing metadata llama.{k}")))
    };
    let (hidden, heads) = (num("embedding_length")?, num("attention.head_count")?);
    if heads == 0 || hidden % heads != 0 {
        return Err(input(
            path,
            format!("embedding_length {hidden} does not split into {heads} heads"),
        ));
    }
    if let Some(t) = get("llama.rope.scaling.type")
        .and_then(Value::as_str)
        .filter(|t| *t != "none")
    {
        return Err(input(
            path,
            format!("rope scaling {t} is not supported yet"),
        ));
    }
    let tokens = get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| input(path, "missing tokenizer.ggml.tokens"))?;
    let kv_heads = num("attention.head_count_kv").unwrap_or(heads);
    let config = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: num("feed_forward_length")?,
        num_hidden_layers: num("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: num("attention.key_length").unwrap_or(hidden / heads),
        vocab_size: num("vocab_size").unwrap_or(tokens.len()),
        max_position_embeddings: num("context_length")?,
        rms_norm_eps: get("llama.attention.layer_norm_rms_epsilon")
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                input(
                    path,
                    "missing metadata llama.attention.layer_norm_rms_epsilon",
                )
            })?,
        rope_theta: get("llama.rope.freq_base")
            .and_then(Value::as_f64)
            .unwrap_or(10000.0),
        tie_word_embeddings: !h.tensors.iter().any(|t| t.name == "output.weight"),
    };
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(input(
            path,
            format!("head_count {heads} is not a multiple of head_count_kv {kv_heads}"),
        ));
    }

    let extents = tensor_extents(&h, map.len()).map_err(|e| input(path, e))?;
    let mut tensors = Vec::with_capacity(h.tensors.len());
    for (t, (ty, range)) in h.tensors.iter().zip(extents) {
        let name =
            hf_name(&t.name).ok_or_else(|| input(path, format!("unexpected tensor {}", t.name)))?;
        let unpermute_heads = if name.ends_with("q_proj.weight") {
            Some(heads)
        } else if name.ends_with("k_proj.weight") {
            Some(kv_heads)
        } else {
            None
        };
        tensors.push(SrcTensor {
            name,
            shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
            ty,
            file: 0,
            range,
            unpermute_heads,
        });
    }
    let (tokenizer_json, tokenizer) = tokenizer(path, md, tokens)?;
    Ok(Checkpoint {
        kind: "gguf",
        path: path.to_path_buf(),
        architecture: "LlamaForCausalLM".into(),
        config,
        tensors,
        files: vec![(path.to_path_buf(), map)],
        tokenizer_json,
        tokenizer,
    })
}

/// BPE merges for a SentencePiece vocabulary, as transformers derives them: every split of a
/// piece into two pieces of the vocabulary is a merge, ranked by the whole piece's score (ties
/// in vocabulary order).
fn spm_merges(tokens: &[&str], scores: &[f64]) -> Vec<[String; 2]> {
    let ids: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, [String; 2])> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = piece.split_at(i);
                Some((*ids.get(l)?, *ids.get(r)?, l, r))
            })
            .collect();
        local.sort_by_key(|m| (m.0, m.1));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (score, [l.to_string(), r.to_string()])),
        );
    }
    // Stable: equal scores keep the vocabulary order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.into_iter().map(|m| m.1).collect()
}

/// Builds a Hugging Face `tokenizer.json` from the GGUF tokenizer metadata: `gpt2` (byte-level
/// BPE) or `llama` (SentencePiece BPE with byte fallback).
fn tokenizer(
    path: &Path,
    md: &BTreeMap<String, Value>,
    tokens: &[Value],
) -> Result<(String, TokenizerInfo)> {
    let get = |k: &str| md.get(k);
    let model = get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    if model != "gpt2" && model != "llama" {
        return Err(input(
            path,
            format!("tokenizer model {model} is not supported (gpt2 byte-level BPE and llama SentencePiece are)"),
        ));
    }
    let tokens: Vec<&str> = tokens
        .iter()
        .map(|t| {
            t.as_str()
                .ok_or_else(|| input(path, "tokenizer.ggml.tokens holds a non-string"))
        })
        .collect::<Result<_>>()?;
    let types: Vec<u64> = get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<&str> = get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let id = |k: &str| get(k).and_then(Value::as_u64).map(|v| v as u32);
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    // llama.cpp adds BOS by default for SentencePiece vocabularies.
    let add_bos = get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(model == "llama");
    let tok_str = |i: Option<u32>| {
        i.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };

    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched whole, before BPE.
    let added: Vec<_> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(i, t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": *t == 4, "special": *t == 3})
        })
        .collect();
    let bos_template = tok_str(bos).filter(|_| add_bos).map(|b| {
        json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [bos], "tokens": [b]}}
        })
    });
    let tj = if model == "gpt2" {
        let post = bos_template.unwrap_or_else(|| {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true})
        });
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        })
    } else {
        // SentencePiece BPE as transformers' LlamaTokenizerFast expresses it: spaces become "▁"
        // (with a dummy prefix), unknown characters fall back to <0xXX> byte tokens, and the
        // merges are derived from the vocabulary ranked by piece score.
        let scores: Vec<f64> = get("tokenizer.ggml.scores")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
            .ok_or_else(|| input(path, "missing tokenizer.ggml.scores for a llama tokenizer"))?;
        if scores.len() != tokens.len() {
            return Err(input(path, format!("{} token scores for {} tokens", scores.len(), tokens.len())));
        }
        let prefix = get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
        let unk = id("tokenizer.ggml.unknown_token_id").and_then(|i| tok_str(Some(i)));
        let mut normalizers = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if prefix {
            normalizers.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": bos_template,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": spm_merges(&tokens, &scores)}
        })
    }
    .to_string();
    tokenizers::Tokenizer::from_bytes(tj.as_bytes())
        .map_err(|e| input(path, format!("unreadable tokenizer metadata: {e}")))?;
    let info = TokenizerInfo {
        file: clocher_engine::format::TOKENIZER_FILE.into(),
        bos_token_id: bos,
        eos_token_ids: eos.into_iter().collect(),
        add_bos,
        chat_template: get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string),
        bos_token: tok_str(bos),
        eos_token: tok_str(eos),
    };
    Ok((tj, info))
}
