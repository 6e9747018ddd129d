//! Per-tensor storage plans: which dtype each tensor is written in, from `--precision`, the
//! default int8w / int4w rules, or a `q4_manifest.json` written by `clocher-pack ptq`.

use crate::error::{input, Result};
use crate::source::Checkpoint;
use clocher_engine::format::{self, Dtype, GroupSize, Precision, QuantSpec};
use clocher_engine::kernels::blocks::{self, GgmlType};
use clocher_engine::kernels::int::{Clip, Scheme};
use clocher_engine::kernels::rows;
use half::{bf16, f16};
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

/// True for the per-layer linear projections (what "bits per weight" is averaged over).
pub fn is_linear(name: &str) -> bool {
    name.starts_with("model.layers.") && !format::is_norm(name)
}

/// The default rules: int8w puts the linear layers at int8 with per-row min-max scales, int4w
/// at int4 in asym groups of 32. int8w stores the embedding and output head as ggml's Q8_0
/// (blocks of 32 with their own scale: per-row int8 cost SmolLM2 0.4% perplexity there, Q8_0
/// nothing measurable); int4w as Q5_1 (6 bits per weight, where llama.cpp's 4-bit mixes put
/// the head at Q6_K, whose 256-wide blocks SmolLM2's 576-wide rows can't take): a quarter of
/// int4w's bytes per token were that head at Q8_0 (ADR 19).
pub fn default_plan(precision: Precision, name: &str) -> Option<TensorPlan> {
    let spec = |bits, group_size| QuantSpec {
        bits,
        group_size,
        scheme: Scheme::Asym,
        clip: Clip::None,
    };
    match precision {
        Precision::Int8w if !is_linear(name) => {
            Some(TensorPlan::Plain(Dtype::Ggml(GgmlType::Q8_0)))
        }
        Precision::Int4w if !is_linear(name) => {
            Some(TensorPlan::Plain(format::stored(GgmlType::Q5_1)))
        }
        Precision::Int8w => Some(TensorPlan::Quant(spec(8, GroupSize::Row))),
        Precision::Int4w => Some(TensorPlan::Quant(spec(4, GroupSize::Size(32)))),
        _ => None,
    }
}

/// The bytes of `w` (row-major, rows of `cols`) stored as `plan` says, or why they can't be.
pub fn encode(plan: TensorPlan, w: &[f32], cols: usize) -> std::result::Result<Vec<u8>, String> {
    match plan {
        TensorPlan::Quant(q) => q.quantize(w, cols),
        TensorPlan::Plain(d) => Ok(match d {
            Dtype::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::BF16 => w
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::F16 => w
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::Ggml(GgmlType::Q8_0) => {
                d.row_bytes(cols)?;
                bytemuck::cast_slice(&blocks::quantize_q8_0_ref(w)).to_vec()
            }
            Dtype::Rows(t @ GgmlType::Q5_1) => {
                d.row_bytes(cols)?;
                let q = blocks::quantize_q5_1_ref(w);
                split(d, t, cols, bytemuck::cast_slice(&q))
            }
            other => return Err(format!("converting to {} is not offered", other.name())),
        }),
    }
}

/// GGUF blocks of `t` (rows of `cols` weights) split by field within each row, as `d`
/// (`Dtype::Rows` or `Dtype::RowsLanes` of `t`) keeps them.
pub fn split(d: Dtype, t: GgmlType, cols: usize, blocks: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; blocks.len()];
    let lanes = d == Dtype::RowsLanes(t);
    rows::split_rows(t, cols / t.block_elems(), lanes, blocks, &mut out);
    out
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
            TensorPlan::Plain(format::stored(src.ty))
        } else {
            let entry = manifest.and_then(|(p, m)| m.tensors.get(name).map(|e| (p, e)));
            let plan = match entry {
                Some((path, e)) => manifest_spec(path, name, e, precision)?.map(TensorPlan::Quant),
                None => default_plan(precision, name),
            };
            let plan = plan.unwrap_or(TensorPlan::Plain(format::stored(src.ty)));
            let dtype = match plan {
                TensorPlan::Quant(q) => q.dtype(cols),
                TensorPlan::Plain(d) => Ok(d),
            };
            if let Err(e) = dtype.and_then(|d| d.row_bytes(cols)) {
                let file = manifest.map(|(p, _)| p).unwrap_or(&ck.path);
                return Err(input(file, format!("tensor {name} ({shape:?}): {e}")));
            }
            plan
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
