//! `clocher-pack ptq`: post-training calibration of weight-only quantization.
//!
//! Runs the f32 model on calibration text ([`clocher_engine::model::calib`], the engine's own
//! kernels with run-time sizes), then for every linear layer compares its output on those
//! activations with the original and the quantized weights (cosine over every token and
//! output). A tensor under the gate falls back to int8, then to the source precision. The
//! manifest records the decision and the cosines for each tensor.

use crate::error::{input, write_err, Result};
use crate::quant::{self, Manifest, ManifestTensor};
use crate::source::Checkpoint;
use clocher_engine::format::{self, Dtype, GroupSize, QuantSpec};
use clocher_engine::kernels::int::{self, Clip, Scheme};
use clocher_engine::kernels::{self, Isa};
use clocher_engine::model::calib;
use clocher_engine::pool::Pool;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Calibration text used without `--calib`: plain English prose, a dialogue turn, a list and
/// a little code, so the activations cover the usual kinds of input.
pub const DEFAULT_CALIB: &str = include_str!("calib.txt");

#[derive(Debug, clap::Args)]
pub struct PtqArgs {
    /// Hugging Face folder or .gguf file.
    pub src: PathBuf,
    /// Where to write the manifest.
    #[arg(long, default_value = "quant/q4_manifest.json")]
    pub out: PathBuf,
    /// Bits of the quantized linear layers: 4 or 8.
    #[arg(long, default_value = "4")]
    pub bits: String,
    /// Weights per scale: 32, 64, 128 or row (int4); row or tensor (int8)
    /// [default: 32 for 4 bits, row for 8].
    #[arg(long)]
    pub group_size: Option<String>,
    /// sym or asym (min-max).
    #[arg(long, default_value = "asym")]
    pub scheme: String,
    /// none, percentile:P or mse.
    #[arg(long, default_value = "none")]
    pub clip: String,
    /// Calibration text file [default: a built-in text].
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration tokens taken from the text.
    #[arg(long, default_value_t = 256)]
    pub calib_tokens: usize,
    /// Minimum output cosine for a tensor to take the requested bits.
    #[arg(long, default_value_t = 0.995)]
    pub gate_cosine: f64,
    /// Worker threads [default: all cores].
    #[arg(long, env = "IE_THREADS")]
    pub threads: Option<usize>,
}

/// What the arguments ask for, checked.
struct Request {
    spec: QuantSpec,
    gate: f64,
}

fn request(a: &PtqArgs) -> Result<Request> {
    let bad = |m: String| input(&a.src, format!("ptq: {m}"));
    let bits: u8 = match a.bits.as_str() {
        "4" => 4,
        "8" => 8,
        b => return Err(bad(format!("--bits {b} is neither 4 nor 8"))),
    };
    let group_size = match &a.group_size {
        Some(g) => g
            .parse()
            .map_err(|e: String| bad(format!("--group-size: {e}")))?,
        None if bits == 4 => GroupSize::Size(32),
        None => GroupSize::Row,
    };
    let scheme = match a.scheme.as_str() {
        "sym" => Scheme::Sym,
        "asym" => Scheme::Asym,
        s => return Err(bad(format!("--scheme {s} is neither sym nor asym"))),
    };
    let clip: Clip = a
        .clip
        .parse()
        .map_err(|e: String| bad(format!("--clip: {e}")))?;
    if !(a.gate_cosine > 0.0 && a.gate_cosine <= 1.0) {
        return Err(bad(format!(
            "--gate-cosine {} is outside (0, 1]",
            a.gate_cosine
        )));
    }
    let spec = QuantSpec {
        bits,
        group_size,
        scheme,
        clip,
    };
    // Catch a group size no row can take before any work (rows the size doesn't divide are
    // reported per tensor).
    let cols = match group_size {
        GroupSize::Size(n) => n,
        _ => int::INT4_GROUP_MULTIPLE,
    };
    spec.dtype(cols)
        .map_err(|e| bad(format!("--group-size: {e}")))?;
    Ok(Request {
        spec,
        gate: a.gate_cosine,
    })
}

/// Runs `ptq` and writes the manifest; returns a one-line summary.
pub fn run(a: &PtqArgs) -> Result<String> {
    let start = Instant::now();
    let req = request(a)?;
    let ck = crate::open(&a.src)?;
    crate::iebin::check_tensors(&ck)?;
    let (text, calib_name) = match &a.calib {
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(|e| input(p, format!("reading calibration text: {e}")))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CALIB.to_string(), "built-in".to_string()),
    };
    let tok = tokenizers::Tokenizer::from_bytes(ck.tokenizer_json.as_bytes())
        .map_err(|e| input(&ck.path, format!("loading the tokenizer: {e}")))?;
    let mut ids = tok
        .encode(text.as_str(), true)
        .map_err(|e| input(&ck.path, format!("tokenizing the calibration text: {e}")))?
        .get_ids()
        .to_vec();
    ids.truncate(a.calib_tokens.min(ck.config.max_position_embeddings));
    if ids.len() < 8 {
        return Err(input(
            a.calib.as_deref().unwrap_or(&ck.path),
            format!(
                "calibration text has {} tokens; ptq needs at least 8",
                ids.len()
            ),
        ));
    }
    let weights: HashMap<String, Vec<f32>> = ck
        .tensors
        .iter()
        .map(|t| (t.name.clone(), ck.read_f32(t)))
        .collect();
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = Pool::new(threads);
    let acts = calib::capture(&ck.config, &|n| weights[n].as_slice(), &ids, &pool);

    let mut tensors = BTreeMap::new();
    let (mut bits_num, mut bits_den) = (0f64, 0f64);
    let mut counts = BTreeMap::<&str, usize>::new();
    for (name, shape) in format::expected_tensors(&ck.config) {
        // The embedding and head follow the default rules (or a hand-written manifest line).
        if !quant::is_linear(&name) {
            continue;
        }
        let cols = shape[1];
        let w = &weights[&name];
        let first = req.spec;
        let int8 = QuantSpec {
            bits: 8,
            group_size: GroupSize::Row,
            ..req.spec
        };
        let mut line = ManifestTensor {
            bits: None,
            group_size: None,
            scheme: None,
            clip: None,
            cosine_int4: None,
            cosine_int8: None,
            decision: None,
        };
        let mut chosen = None;
        // A group size that doesn't divide this tensor's rows falls back like a failed gate.
        let unfit = first.dtype(cols).err();
        for spec in [first, int8] {
            if spec.bits == 8 && chosen.is_some() {
                break;
            }
            if spec == first && unfit.is_some() {
                continue;
            }
            let cos = cosine(&pool, &ck, &acts, &name, w, cols, &spec)?;
            if spec.bits == 4 {
                line.cosine_int4 = Some(round6(cos));
            } else {
                line.cosine_int8 = Some(round6(cos));
            }
            if cos >= req.gate {
                chosen = Some(spec);
                line.decision = Some(format!(
                    "int{} (cosine {cos:.6} >= gate {})",
                    spec.bits, req.gate
                ));
            } else if spec.bits == 8 {
                line.decision = Some(format!(
                    "source precision (int8 cosine {cos:.6} < gate {})",
                    req.gate
                ));
            }
            if let (Some(e), Some(d)) = (&unfit, line.decision.as_mut()) {
                *d = format!("{d}; requested layout: {e}");
            }
            if spec.bits == 8 {
                break;
            }
        }
        let src = ck.find(&name).expect("check_tensors ran");
        let dtype = match chosen {
            Some(s) => {
                line.bits = Some(s.bits);
                line.group_size = Some(s.group_size);
                line.scheme = Some(s.scheme);
                line.clip = Some(s.clip);
                s.dtype(cols)
                    .map_err(|e| input(&ck.path, format!("tensor {name}: {e}")))?
            }
            None => Dtype::Ggml(src.ty),
        };
        *counts
            .entry(match chosen.map(|s| s.bits) {
                Some(4) => "int4",
                Some(_) => "int8",
                None => "source",
            })
            .or_default() += 1;
        if quant::is_linear(&name) {
            let bytes = dtype.nbytes(&shape).map_err(|e| input(&ck.path, e))?;
            bits_num += bytes as f64 * 8.0;
            bits_den += (shape[0] * cols) as f64;
        }
        tensors.insert(name, line);
    }
    let bpw = bits_num / bits_den.max(1.0);
    let manifest = Manifest {
        format: quant::MANIFEST_FORMAT.into(),
        version: quant::MANIFEST_VERSION,
        source: ck.path.display().to_string(),
        ptq: serde_json::json!({
            "bits": req.spec.bits,
            "group_size": req.spec.group_size,
            "scheme": req.spec.scheme,
            "clip": req.spec.clip,
            "gate_cosine": req.gate,
            "calib": calib_name,
            "calib_tokens": ids.len(),
            "isa": kernels::isa().name(),
            "tensors": counts,
            "linear_bits_per_weight": (bpw * 1000.0).round() / 1000.0,
            "seconds": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        }),
        tensors,
    };
    write_atomic(
        &a.out,
        serde_json::to_string_pretty(&manifest)
            .expect("serializable")
            .as_bytes(),
    )?;
    Ok(format!(
        "wrote {}: {} ({:.3} bits per linear weight, {} calibration tokens, {:.1}s)\n",
        a.out.display(),
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        bpw,
        ids.len(),
        start.elapsed().as_secs_f64()
    ))
}

fn round6(v: f64) -> f64 {
    (v * 1e6).floor() / 1e6
}

/// Cosine between `W x` and `Q(W) x` over every calibration token and output row.
fn cosine(
    pool: &Pool,
    ck: &Checkpoint,
    acts: &calib::Activations,
    name: &str,
    w: &[f32],
    cols: usize,
    spec: &QuantSpec,
) -> Result<f64> {
    let q = spec
        .quantize(w, cols)
        .map_err(|e| input(&ck.path, format!("quantizing tensor {name}: {e}")))?;
    let dtype = spec.dtype(cols).map_err(|e| input(&ck.path, e))?;
    let rb = dtype.row_bytes(cols).map_err(|e| input(&ck.path, e))?;
    let rows = w.len() / cols;
    let isa = kernels::isa();
    let x = acts
        .input_of(name)
        .expect("every linear layer has a recorded input");
    let (mut y, mut yq) = (
        vec![0.0f32; rows * acts.tokens],
        vec![0.0f32; rows * acts.tokens],
    );
    for ((xt, y), yq) in x
        .chunks_exact(cols)
        .zip(y.chunks_exact_mut(rows))
        .zip(yq.chunks_exact_mut(rows))
    {
        calib::par_gemv_f32(pool, isa, w, xt, y);
        pool.par_rows(yq, 16, &|row, ys| {
            gemv(isa, dtype, &q[row * rb..(row + ys.len()) * rb], xt, ys)
        });
    }
    Ok(cos_pairs(y.iter().zip(&yq)))
}

fn gemv(isa: Isa, d: Dtype, w: &[u8], x: &[f32], y: &mut [f32]) {
    match d {
        Dtype::Int8 => int::gemv_int8(isa, w, x, y),
        Dtype::Int4 { lanes: true, .. } => int::gemv_int4_lanes(isa, w, x, y),
        Dtype::Int4 { group, .. } => int::gemv_int4(isa, group, w, x, y),
        Dtype::Ggml(_) | Dtype::Rows(_) | Dtype::RowsLanes(_) => {
            unreachable!("ptq quantizes to int types")
        }
    }
}

fn cos_pairs<'a>(it: impl Iterator<Item = (&'a f32, &'a f32)>) -> f64 {
    let (mut dot, mut n1, mut n2) = (0f64, 0f64, 0f64);
    for (a, b) in it {
        dot += *a as f64 * *b as f64;
        n1 += *a as f64 * *a as f64;
        n2 += *b as f64 * *b as f64;
    }
    cos_from(dot, n1, n2)
}

fn cos_from(dot: f64, n1: f64, n2: f64) -> f64 {
    if n1 == 0.0 && n2 == 0.0 {
        1.0
    } else if n1 == 0.0 || n2 == 0.0 {
        0.0
    } else {
        dot / (n1.sqrt() * n2.sqrt())
    }
}

/// Writes `bytes` to a temporary sibling and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    clocher_engine::runtime::write_atomic(path, bytes).map_err(write_err(path))
}
