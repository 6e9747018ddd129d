//! `clocher-pack inspect FILE`: a readable summary of a GGUF file, a safetensors folder or an
//! IEBIN model (its folder or its `model.ie.json`).

use crate::error::{input, io, Result};
use crate::source::{gguf, GgmlType};
use clocher_engine::format::{self, ModelMeta};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Per-format tensor count and bytes.
type Formats = BTreeMap<String, (usize, u64)>;

fn table(out: &mut String, formats: &Formats) {
    let _ = writeln!(out, "  {:<10} {:>8} {:>14}", "format", "tensors", "bytes");
    for (f, (n, b)) in formats {
        let _ = writeln!(
            out,
            "  {f:<10} {n:>8} {b:>14}  ({:.1} MiB)",
            *b as f64 / (1 << 20) as f64
        );
    }
}

pub fn inspect(path: &Path) -> Result<String> {
    let meta_path = if path.is_dir() {
        path.join(format::META_FILE)
    } else {
        path.to_path_buf()
    };
    if meta_path
        .file_name()
        .is_some_and(|n| n == format::META_FILE)
        && meta_path.exists()
    {
        return inspect_iebin(&meta_path);
    }
    if path.is_dir() {
        return inspect_hf(path);
    }
    inspect_gguf(path)
}

fn inspect_iebin(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let m: ModelMeta = serde_json::from_str(&text)
        .map_err(|e| input(path, format!("invalid model.ie.json: {e}")))?;
    let mut formats = Formats::new();
    for t in &m.tensors {
        let e = formats.entry(t.dtype.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.nbytes;
    }
    let c = &m.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} v{} model {:?} ({})",
        path.display(),
        m.format,
        m.version,
        m.name,
        m.architecture
    );
    let _ = writeln!(
        out,
        "  precision {}, blob {} bytes, xxh3 {}",
        m.precision.name(),
        m.blob.size,
        m.blob.xxh3
    );
    let _ = writeln!(
        out,
        "  hidden {} x {} layers, heads {} (kv {}) x {}, ffn {}, vocab {}, context {}, tied head {}",
        c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
        c.intermediate_size, c.vocab_size, c.max_position_embeddings, c.tie_word_embeddings
    );
    let _ = writeln!(out, "  source: {} {}", m.source.kind, m.source.path);
    table(&mut out, &formats);
    Ok(out)
}

fn inspect_hf(dir: &Path) -> Result<String> {
    let ck = crate::source::hf::open(dir)?;
    let mut formats = Formats::new();
    for t in &ck.tensors {
        let e = formats.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.range.len() as u64;
    }
    let c = &ck.config;
    let params: usize = ck
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: safetensors folder, {} file(s), {}",
        dir.display(),
        ck.files.len(),
        ck.architecture
    );
    let _ = writeln!(
        out,
        "  {:.1}M parameters; hidden {} x {} layers, heads {} (kv {}) x {}, ffn {}, vocab {}, context {}, tied head {}",
        params as f64 / 1e6, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
        c.head_dim, c.intermediate_size, c.vocab_size, c.max_position_embeddings, c.tie_word_embeddings
    );
    table(&mut out, &formats);
    Ok(out)
}

fn inspect_gguf(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: read-only mapping, read while inspecting.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
    let h = gguf::parse_header(&map).map_err(|e| input(path, e))?;
    let mut formats = Formats::new();
    let mut params = 0u64;
    for t in &h.tensors {
        let numel = t.dims.iter().product::<u64>();
        params += numel;
        let name = gguf::type_name(t.type_id);
        let bytes = GgmlType::from_id(t.type_id)
            .and_then(|ty| ty.nbytes(numel as usize))
            .unwrap_or(0) as u64;
        let e = formats.entry(name).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let s = |k: &str| {
        h.metadata
            .get(k)
            .and_then(gguf::Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let n = |k: &str| {
        h.metadata
            .get(k)
            .and_then(gguf::Value::as_u64)
            .map_or("?".into(), |v| v.to_string())
    };
    let arch = s("general.architecture");
    let p = |k: &str| n(&format!("{arch}.{k}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: GGUF v{}, {} bytes, {} tensors, {} metadata keys",
        path.display(),
        h.version,
        map.len(),
        h.tensors.len(),
        h.metadata.len()
    );
    let _ = writeln!(
        out,
        "  architecture {arch}, name {:?}, {:.1}M parameters",
        s("general.name"),
        params as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "  hidden {} x {} layers, heads {} (kv {}), ffn {}, context {}",
        p("embedding_length"),
        p("block_count"),
        p("attention.head_count"),
        p("attention.head_count_kv"),
        p("feed_forward_length"),
        p("context_length")
    );
    let tokens = h
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(gguf::Value::as_array)
        .map_or(0, |a| a.len());
    let _ = writeln!(
        out,
        "  tokenizer {} ({} tokens)",
        s("tokenizer.ggml.model"),
        tokens
    );
    table(&mut out, &formats);
    Ok(out)
}
