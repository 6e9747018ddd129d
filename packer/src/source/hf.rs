//! Hugging Face checkpoint folders: `config.json`, safetensors (one file or index + shards),
//! `tokenizer.json`, `tokenizer_config.json`, chat template.

use super::{Checkpoint, GgmlType, SrcTensor};
use crate::error::{input, io, Result};
use clocher_engine::format::{LlamaConfig, TokenizerInfo, SUPPORTED_ARCHITECTURES};
use memmap2::Mmap;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| input(path, format!("invalid JSON: {e}")))
}

/// Reads `config.json` into a [`LlamaConfig`], rejecting what the engine can't run.
pub fn read_config(path: &Path) -> Result<(String, LlamaConfig)> {
    let v = read_json(path)?;
    let arch = v["architectures"][0]
        .as_str()
        .unwrap_or("<none>")
        .to_string();
    if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(input(
            path,
            format!(
                "unsupported architecture {arch} (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }
    let req = |k: &str| -> Result<usize> {
        v[k].as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| input(path, format!("missing or non-integer field {k}")))
    };
    let heads = req("num_attention_heads")?;
    let hidden = req("hidden_size")?;
    if heads == 0 || hidden % heads != 0 && v["head_dim"].is_null() {
        return Err(input(
            path,
            format!("hidden_size {hidden} does not split into {heads} heads"),
        ));
    }
    for k in ["attention_bias", "mlp_bias"] {
        if v[k].as_bool() == Some(true) {
            return Err(input(
                path,
                format!("{k} = true is not supported (Llama without biases only)"),
            ));
        }
    }
    if !v["rope_scaling"].is_null() {
        return Err(input(
            path,
            format!("rope_scaling {} is not supported yet", v["rope_scaling"]),
        ));
    }
    if let Some(act) = v["hidden_act"].as_str().filter(|a| *a != "silu") {
        return Err(input(
            path,
            format!("hidden_act {act} is not supported (silu only)"),
        ));
    }
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: req("intermediate_size")?,
        num_hidden_layers: req("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: v["num_key_value_heads"]
            .as_u64()
            .map_or(heads, |x| x as usize),
        head_dim: v["head_dim"]
            .as_u64()
            .map_or(hidden / heads, |x| x as usize),
        vocab_size: req("vocab_size")?,
        max_position_embeddings: v["max_position_embeddings"].as_u64().unwrap_or(2048) as usize,
        rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        rope_theta: v["rope_theta"].as_f64().unwrap_or(10000.0),
        tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
    };
    if cfg.num_key_value_heads == 0
        || !cfg
            .num_attention_heads
            .is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(input(
            path,
            format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {}",
                cfg.num_key_value_heads
            ),
        ));
    }
    Ok((arch, cfg))
}

fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// A special token in tokenizer_config.json: a plain string or `{"content": ...}`.
fn token_str(v: &Value) -> Option<String> {
    v.as_str()
        .or_else(|| v["content"].as_str())
        .map(str::to_string)
}

pub fn open(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let (architecture, config) = read_config(&config_path)?;

    // Weights: one file, or an index naming the shards.
    let index = dir.join("model.safetensors.index.json");
    let shard_names: Vec<String> = if index.exists() {
        let v = read_json(&index)?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| input(&index, "no weight_map object"))?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        if let Some(bad) = names.iter().find(|n| n.contains('/') || n.contains('\\')) {
            return Err(input(
                &index,
                format!("shard name {bad} is not a file in this folder"),
            ));
        }
        names
    } else if dir.join("model.safetensors").exists() {
        vec!["model.safetensors".into()]
    } else {
        return Err(input(
            dir,
            "no model.safetensors or model.safetensors.index.json",
        ));
    };
    let mut files = Vec::new();
    let mut tensors = Vec::new();
    for (fi, name) in shard_names.iter().enumerate() {
        let path = dir.join(name);
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        // SAFETY: read-only mapping; the packer only reads it while packing.
        let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            input(
                &path,
                format!("invalid or truncated safetensors file ({e:?})"),
            )
        })?;
        let data_start = 8 + header_len;
        let mut entries: Vec<_> = meta.tensors().into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (tname, info) in entries {
            use safetensors::Dtype as D;
            let ty = match info.dtype {
                D::F32 => GgmlType::F32,
                D::F16 => GgmlType::F16,
                D::BF16 => GgmlType::BF16,
                other => {
                    return Err(input(
                        &path,
                        format!(
                            "tensor {tname}: unsupported dtype {other:?} (F32, F16, BF16 only)"
                        ),
                    ))
                }
            };
            let (s, e) = info.data_offsets;
            let range = data_start + s..data_start + e;
            if range.end > map.len() {
                return Err(input(
                    &path,
                    format!("tensor {tname}: data past the end of the file"),
                ));
            }
            tensors.push(SrcTensor {
                name: tname,
                shape: info.shape.clone(),
                ty,
                file: fi,
                range,
                unpermute_heads: None,
            });
        }
        files.push((path, map));
    }

    // Tokenizer, special tokens and chat template.
    let tok_path = dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(&tok_path).map_err(io(&tok_path))?;
    let tok = tokenizers::Tokenizer::from_bytes(tokenizer_json.as_bytes())
        .map_err(|e| input(&tok_path, format!("unreadable tokenizer: {e}")))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        Value::Null
    };
    let cfg_json = read_json(&config_path)?;
    let gen_path = dir.join("generation_config.json");
    let gen = if gen_path.exists() {
        read_json(&gen_path)?
    } else {
        Value::Null
    };
    let bos_token = token_str(&tc["bos_token"]);
    let eos_token = token_str(&tc["eos_token"]);
    let mut eos_token_ids = ids(&cfg_json["eos_token_id"]);
    eos_token_ids.extend(ids(&gen["eos_token_id"]));
    eos_token_ids.extend(eos_token.as_deref().and_then(|t| tok.token_to_id(t)));
    eos_token_ids.sort_unstable();
    eos_token_ids.dedup();
    let chat_template = chat_template(dir, &tc)?;
    let add_bos = tc["add_bos_token"].as_bool().unwrap_or(false);
    let tokenizer = TokenizerInfo {
        file: clocher_engine::format::TOKENIZER_FILE.into(),
        bos_token_id: cfg_json["bos_token_id"].as_u64().map(|x| x as u32),
        eos_token_ids,
        add_bos,
        chat_template,
        bos_token,
        eos_token,
    };
    Ok(Checkpoint {
        kind: "safetensors",
        path: dir.to_path_buf(),
        architecture,
        config,
        tensors,
        files,
        tokenizer_json,
        tokenizer,
    })
}

fn chat_template(dir: &Path, tc: &Value) -> Result<Option<String>> {
    let file: PathBuf = dir.join("chat_template.jinja");
    if file.exists() {
        return std::fs::read_to_string(&file).map(Some).map_err(io(&file));
    }
    Ok(match &tc["chat_template"] {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: take the default one.
        Value::Array(a) => a
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}
