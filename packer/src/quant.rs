//! Per-tensor storage plans: which dtype each tensor is written in, from `--precision`, the
//! default int8w / int4w rules, or a `q4_manifest.json` written by `clocher-pack ptq`.

use crate::error::{input, Result};
use crate::source::Checkpoint;
use clocher_engine::format::{self, Dtype, GroupSize, Precision, QuantSpec};
use clocher_engine::kernels::int::{Clip, Scheme};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const MANIFEST_FORMAT: &str = "clocher-q4-manifest";
pub const MANIFEST_VERSION: u32 = 1;
/// A manifest larger than this is not one (a model has a few thousand tensors at most).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TensorPlan {
    /// Written as this float or GGUF dtype (the source's bytes when it is the source's type).
    Plain(Dtype),
    /// Quantized to int8 / int4.
    Quant(QuantSpec),
}

impl TensorPlan {
    pub fn dtype(&self, cols: usize) -> Dtype {
        match self {
            TensorPlan::Plain(d) => *d,
            TensorPlan::Quant(q) => q.dtype(cols).expect("validated when planned"),
        }
    }
}

/// One tensor's line in `q4_manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestTensor {
    /// 4, 8, or null to keep the source precision.
    pub bits: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<GroupSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<Clip>,
    /// Cosine of the layer's output, quantized vs original weights, on the calibration
    /// activations, for each precision tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_int4: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_int8: Option<f64>,
    /// Why this precision was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
}

/// `q4_manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The checkpoint it was calibrated on.
    #[serde(default)]
    pub source: String,
    /// What `ptq` was asked for, and how it measured.
    #[serde(default)]
    pub ptq: serde_json::Value,
    pub tensors: BTreeMap<String, ManifestTensor>,
}

impl Manifest {
    /// Reads and checks the envelope; the tensors are checked against a model by [`plan`].
    pub fn read(path: &Path) -> Result<Manifest> {
        let len = std::fs::metadata(path)
            .map_err(|e| input(path, format!("reading the manifest: {e}")))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(input(
                path,
                format!("reading the manifest: {len} bytes is too large for a manifest"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| input(path, format!("reading the manifest: {e}")))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| input(path, format!("parsing the manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT || m.version != MANIFEST_VERSION {
            return Err(input(
                path,
                format!(
                    "parsing the manifest: format {:?} version {} is not {MANIFEST_FORMAT:?} version {MANIFEST_VERSION}",
                    m.format, m.version
                ),
            ));
        }
        Ok(m)
    }
}

/// True for the tensors the integer precisions quantize: every 2-D weight (the linear layers,
/// the embedding and the output head).
pub fn is_quantizable(name: &str) -> bool {
    !format::is_norm(name)
}

/// True for the per-layer linear projections (what "bits per weight" is averaged over).
pub fn is_linear(name: &str) -> bool {
    name.starts_with("model.layers.")
}

/// The default rules: int8w puts every weight at int8 with per-row min-max scales; int4w puts
/// the linear layers at int4, groups of 32, asym, and the embedding and head at int8.
pub fn default_spec(precision: Precision, name: &str) -> Option<QuantSpec> {
    let int8 = QuantSpec {
        bits: 8,
        group_size: GroupSize::Row,
        scheme: Scheme::Asym,
        clip: Clip::None,
    };
    match precision {
        Precision::Int8w => Some(int8),
        Precision::Int4w if is_linear(name) => Some(QuantSpec {
            bits: 4,
            group_size: GroupSize::Size(32),
            ..int8
        }),
        Precision::Int4w => Some(int8),
        _ => None,
    }
}

/// The storage plan of every tensor `ck` holds. Checks the manifest against the model first,
/// so a bad one stops the pack before anything is written.
pub fn plan(
    ck: &Checkpoint,
    precision: Precision,
    manifest: Option<(&Path, &Manifest)>,
) -> Result<HashMap<String, TensorPlan>> {
    let expected = format::expected_tensors(&ck.config);
    if let Some((path, m)) = manifest {
        if !matches!(precision, Precision::Int8w | Precision::Int4w) {
            return Err(input(
                path,
                format!(
                    "a manifest needs --precision int8w or int4w, not {}",
                    precision.name()
                ),
            ));
        }
        if let Some(n) = m
            .tensors
            .keys()
            .find(|n| !expected.iter().any(|(e, _)| e == *n))
        {
            return Err(input(
                path,
                format!("checking the manifest: the model has no tensor {n}"),
            ));
        }
        if let Some(n) = m.tensors.keys().find(|n| format::is_norm(n)) {
            return Err(input(
                path,
                format!("checking the manifest: tensor {n} is a norm weight, always stored as f32"),
            ));
        }
    }
    let mut out = HashMap::new();
    for (name, shape) in &expected {
        let src = ck.find(name).expect("check_tensors ran");
        let cols = *shape.last().expect("tensors have a shape");
        let plan = if format::is_norm(name) {
            TensorPlan::Plain(Dtype::F32)
        } else if let Some(d) = precision.dtype() {
            TensorPlan::Plain(d)
        } else if precision == Precision::Gguf {
            TensorPlan::Plain(Dtype::Ggml(src.ty))
        } else {
            let entry = manifest.and_then(|(p, m)| m.tensors.get(name).map(|e| (p, e)));
            let spec = match entry {
                Some((path, e)) => manifest_spec(path, name, e, precision)?,
                None => default_spec(precision, name),
            };
            match spec {
                Some(q) => {
                    q.dtype(cols).map_err(|e| {
                        let file = manifest.map(|(p, _)| p).unwrap_or(&ck.path);
                        input(file, format!("tensor {name} ({shape:?}): {e}"))
                    })?;
                    TensorPlan::Quant(q)
                }
                None => TensorPlan::Plain(Dtype::Ggml(src.ty)),
            }
        };
        out.insert(name.clone(), plan);
    }
    Ok(out)
}

/// The spec a manifest line asks for (`None`: keep the source precision).
fn manifest_spec(
    path: &Path,
    name: &str,
    e: &ManifestTensor,
    precision: Precision,
) -> Result<Option<QuantSpec>> {
    let bits = match e.bits {
        None => return Ok(None),
        Some(b @ (4 | 8)) => b,
        Some(b) => {
            return Err(input(
                path,
                format!("checking the manifest: tensor {name} asks for {b} bits (4 or 8)"),
            ))
        }
    };
    if bits == 4 && precision == Precision::Int8w {
        return Err(input(
            path,
            format!("checking the manifest: tensor {name} asks for 4 bits under --precision int8w"),
        ));
    }
    Ok(Some(QuantSpec {
        bits,
        group_size: e.group_size.unwrap_or(if bits == 4 {
            GroupSize::Size(32)
        } else {
            GroupSize::Row
        }),
        scheme: e.scheme.unwrap_or(Scheme::Asym),
        clip: e.clip.unwrap_or(Clip::None),
    }))
}
