//! What a generated binary needs besides the forward pass: its baked facts, the weights,
//! tokenizer and chat template, the sampler and the metrics.

pub mod bench;
pub mod metrics;
pub mod sampler;
pub mod text;
pub mod weights;

/// Facts a generated crate bakes in as constants (see `clocher_engine::codegen`).
#[derive(Debug, Clone, Copy)]
pub struct BakedInfo {
    pub name: &'static str,
    pub precision: &'static str,
    /// Folder holding `model.ie.bin` at build time; `--model-dir` / `IE_MODEL_DIR` override it.
    pub model_dir: &'static str,
    pub blob_size: u64,
    /// Weight bytes a decoded token reads: the whole blob but the embedding table, of which a
    /// token reads one row (unless the table is also the output head).
    pub bytes_per_token: u64,
    pub blob_xxh3: u64,
    /// The blob itself, when packed with `--embed-weights`.
    pub embedded: Option<&'static [u8]>,
    pub tokenizer_json: &'static [u8],
    /// `tokenizer.bin`, the packer's digest of `tokenizer.json` (ADR 38); empty if none.
    pub tokenizer_digest: &'static [u8],
    pub chat_template: Option<&'static str>,
    pub bos_token: Option<&'static str>,
    pub bos_token_id: Option<u32>,
    /// Whether the tokenizer starts a text with BOS (perplexity then starts each chunk with it).
    pub add_bos: bool,
    pub eos_token: Option<&'static str>,
    pub eos_token_ids: &'static [u32],
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
}

/// Writes `bytes` to `path` through a temporary sibling (`path` + `.tmp`) renamed into place, so
/// a reader never sees a half-written file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// 64-byte aligned wrapper for `include_bytes!`, so embedded tensors are as aligned as mapped ones.
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);
