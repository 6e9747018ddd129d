//! `clocher-pack`: reads a Hugging Face folder or a GGUF file, writes IEBIN v1, and emits the
//! single-model crate that bakes it in.

pub mod emit;
pub mod error;
pub mod iebin;
pub mod inspect;
pub mod ptq;
pub mod quant;
pub mod source;

pub use error::{PackError, Result};

use clocher_engine::format::{self, Precision};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// A Hugging Face folder or a `.gguf` file.
    pub src: PathBuf,
    /// Where IEBIN goes (default `models/<name>`).
    pub out_dir: Option<PathBuf>,
    /// Where the crate goes (default `generated/<name>`).
    pub crate_dir: Option<PathBuf>,
    pub name: Option<String>,
    /// Default: the source's float type, else fp32.
    pub precision: Option<Precision>,
    pub embed_weights: bool,
    /// `q4_manifest.json` for int8w / int4w (default: the rules in [`quant::default_spec`]).
    pub q4_map: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Packed {
    pub out_dir: PathBuf,
    pub crate_dir: PathBuf,
    pub meta: format::ModelMeta,
}

/// Reads a checkpoint: a `.gguf` file or a Hugging Face folder.
pub fn open(src: &Path) -> Result<source::Checkpoint> {
    if src.is_dir() {
        source::hf::open(src)
    } else if src.exists() {
        source::gguf::open(src)
    } else {
        Err(error::input(src, "no such file or folder"))
    }
}

/// A crate- and file-name-safe model name: lower-case ASCII letters, digits and dashes.
pub fn sanitize_name(raw: &str) -> String {
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("model-{s}")
    } else {
        s
    }
}

pub fn pack(o: &PackOptions) -> Result<Packed> {
    let ck = open(&o.src)?;
    let raw_name = match &o.name {
        Some(n) => n.clone(),
        None => {
            let stem = if o.src.is_dir() {
                o.src.file_name()
            } else {
                o.src.file_stem()
            };
            stem.map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        }
    };
    let name = sanitize_name(&raw_name);
    let precision = o.precision.unwrap_or_else(|| iebin::default_precision(&ck));
    let out_dir = o
        .out_dir
        .clone()
        .unwrap_or_else(|| Path::new("models").join(&name));
    let crate_dir = o
        .crate_dir
        .clone()
        .unwrap_or_else(|| Path::new("generated").join(&name));

    // Everything that can reject the input runs before the first byte is written.
    iebin::check_tensors(&ck)?;
    let manifest = match &o.q4_map {
        Some(p) => Some((p.as_path(), quant::Manifest::read(p)?)),
        None => None,
    };
    let plan = quant::plan(&ck, precision, manifest.as_ref().map(|(p, m)| (*p, m)))?;
    let staging = iebin::Staging::new(&out_dir)?;
    let meta = iebin::write(&ck, staging.path(), &name, precision, &plan)?;
    drop(ck);
    staging.commit(&out_dir, |d| d.join(format::META_FILE).exists())?;
    let out_dir = out_dir.canonicalize().map_err(error::io(&out_dir))?;
    let crate_dir = emit::emit(&crate_dir, &name, &out_dir, o.embed_weights)?;
    Ok(Packed {
        out_dir,
        crate_dir,
        meta,
    })
}
