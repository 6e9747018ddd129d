//! The command line of every generated binary. One JSON line on stdout; the rest on stderr.

use crate::error::{EngineError, Result};
use crate::model::CausalLm;
use crate::pool::Pool;
use crate::runtime::{metrics, sampler, text, weights, BakedInfo};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    about = "Generate text with the one model this binary was built for",
    version
)]
pub struct Args {
    /// Text to continue (or, with --chat, the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate; generation also stops at an end-of-sequence token.
    #[arg(long, default_value_t = 128)]
    pub max_new: usize,
    /// Threads for the kernels (default: IE_THREADS, else all cores).
    #[arg(long, env = "IE_THREADS")]
    pub threads: Option<usize>,
    /// Render the prompt as one user turn with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler's random generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the last prompt position's logits here, as little-endian f32.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    /// Folder holding model.ie.bin (default: IE_MODEL_DIR, else the folder it was packed to).
    #[arg(long, env = "IE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Context length in tokens (default: the model's maximum).
    #[arg(long)]
    pub ctx: Option<usize>,
}

/// Entry point of a generated binary.
pub fn main<M: CausalLm>(info: &BakedInfo, offsets: &M::Offsets) -> ExitCode {
    let start = Instant::now();
    let args = Args::parse();
    match run::<M>(info, offsets, &args, start) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn run<M: CausalLm>(
    info: &BakedInfo,
    offsets: &M::Offsets,
    args: &Args,
    start: Instant,
) -> Result<String> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(EngineError::Usage("--threads must be at least 1".into()));
    }
    let ctx = args.ctx.unwrap_or(M::CONTEXT);
    if ctx == 0 || ctx > M::CONTEXT {
        return Err(EngineError::Usage(format!(
            "--ctx must be between 1 and {}",
            M::CONTEXT
        )));
    }
    let blob = weights::load(info, args.model_dir.as_deref())?;
    let model = M::load(blob, offsets, info.rms_norm_eps, info.rope_theta)?;
    let tok = text::load_tokenizer(info.tokenizer_json)?;
    let prompt = if args.chat {
        let tmpl = info
            .chat_template
            .ok_or_else(|| EngineError::ChatTemplate("this model has no chat template".into()))?;
        text::render_chat(tmpl, &args.prompt, info.bos_token, info.eos_token)?
    } else {
        args.prompt.clone()
    };
    let ids = text::encode(&tok, &prompt)?;
    if ids.is_empty() {
        return Err(EngineError::Prompt("the prompt is empty".into()));
    }
    if ids.len() >= ctx {
        return Err(EngineError::Prompt(format!(
            "the prompt is {} tokens, longer than the context of {ctx} tokens",
            ids.len()
        )));
    }
    let pool = Pool::new(threads);
    let mut state = model.new_state(ctx);
    let mut sampler = sampler::Sampler::new(sampler::SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    });
    let load_time = start.elapsed();

    // Prefill: the prompt token by token, logits only at the last position.
    let gen_start = Instant::now();
    let mut next = 0;
    for (pos, &id) in ids.iter().enumerate() {
        if let Some(logits) = model.step(&mut state, &pool, id, pos, pos + 1 == ids.len()) {
            if let Some(path) = &args.dump_logits {
                write_f32_atomic(path, logits)?;
            }
            next = sampler.sample(logits);
        }
    }
    let prefill = gen_start.elapsed();
    let mut out = Vec::new();
    let mut latencies = Vec::new();
    let max_new = args.max_new.min(ctx - ids.len());
    if max_new > 0 {
        out.push(next);
    }
    let mut last = Instant::now();
    while out.len() < max_new && !info.eos_token_ids.contains(&next) {
        let pos = ids.len() + out.len() - 1;
        let logits = model
            .step(&mut state, &pool, next, pos, true)
            .expect("logits were asked for");
        next = sampler.sample(logits);
        out.push(next);
        let now = Instant::now();
        latencies.push((now - last).as_secs_f64() * 1e3);
        last = now;
    }
    let wall = gen_start.elapsed().as_secs_f64();
    let text = text::decode(&tok, &out)?;
    let line = serde_json::json!({
        "model": info.name,
        "precision": info.precision,
        "isa": crate::kernels::isa().name(),
        "threads": threads,
        "prompt_tokens": ids.len(),
        "generated_tokens": out.len(),
        "token_ids": out,
        "text": text,
        "wall_time_s": wall,
        "tps_true": if wall > 0.0 { out.len() as f64 / wall } else { 0.0 },
        "ttft_ms": (prefill.as_secs_f64() * 1e3),
        "latency_p50_ms": metrics::percentile(&latencies, 50.0),
        "latency_p95_ms": metrics::percentile(&latencies, 95.0),
        "prefill_tps": ids.len() as f64 / prefill.as_secs_f64(),
        "rss_peak_mb": metrics::rss_peak_mb(),
        "load_time_ms": load_time.as_secs_f64() * 1e3,
    });
    Ok(line.to_string())
}

/// Writes `values` as little-endian f32 to a temporary name, then renames it into place.
fn write_f32_atomic(path: &std::path::Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tmp = path.with_extension("tmp");
    let err = |source| EngineError::Output {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
