//! The command line of every generated binary. One JSON line on stdout; the rest on stderr.

use crate::error::{EngineError, Result};
use crate::model::CausalLm;
use crate::pool::Pool;
use crate::runtime::{metrics, sampler, text, weights, BakedInfo};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    about = "Generate text with the one model this binary was built for",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does: the text is cut
    /// into chunks of --ctx tokens and each chunk is scored on its second half.
    Perplexity(PerplexityArgs),
}

/// Options of both generation and perplexity.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Threads for the kernels (default: IE_THREADS, else all cores).
    #[arg(long, env = "IE_THREADS")]
    pub threads: Option<usize>,
    /// Folder holding model.ie.bin (default: IE_MODEL_DIR, else the folder it was packed to).
    #[arg(long, env = "IE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Expected precision: a check only, the binary runs the one it was built with.
    #[arg(long, env = "IE_PRECISION")]
    pub precision: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Text file to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (default: every whole chunk of the text).
    #[arg(long)]
    pub chunks: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Text to continue (or, with --chat, the user's message).
    #[arg(long, required = true)]
    pub prompt: Option<String>,
    /// Most tokens to generate; generation also stops at an end-of-sequence token.
    #[arg(long, default_value_t = 128)]
    pub max_new: usize,
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
    /// Context length in tokens (default: the model's maximum).
    #[arg(long)]
    pub ctx: Option<usize>,
}

/// Entry point of a generated binary.
pub fn main<M: CausalLm>(info: &BakedInfo, offsets: &M::Offsets) -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let common = match &cli.command {
        Some(Command::Perplexity(a)) => &a.common,
        None => &cli.run.common,
    };
    if let Some(p) = common.precision.as_deref().filter(|p| *p != info.precision) {
        eprintln!(
            "error: precision {p} was asked for (--precision / IE_PRECISION), but this binary was built for {}",
            info.precision
        );
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Some(Command::Perplexity(a)) => perplexity::<M>(info, offsets, a, start),
        None => run::<M>(info, offsets, &cli.run, start),
    };
    match result {
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
    let threads = threads(args.common.threads)?;
    let ctx = args.ctx.unwrap_or(M::CONTEXT);
    if ctx == 0 || ctx > M::CONTEXT {
        return Err(EngineError::Usage(format!(
            "--ctx must be between 1 and {}",
            M::CONTEXT
        )));
    }
    let (model, tok) = load::<M>(info, offsets, args.common.model_dir.as_deref())?;
    let prompt = args.prompt.clone().unwrap_or_default();
    let prompt = if args.chat {
        let tmpl = info
            .chat_template
            .ok_or_else(|| EngineError::ChatTemplate("this model has no chat template".into()))?;
        text::render_chat(tmpl, &prompt, info.bos_token, info.eos_token)?
    } else {
        prompt
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

fn threads(arg: Option<usize>) -> Result<usize> {
    match arg.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) {
        0 => Err(EngineError::Usage("--threads must be at least 1".into())),
        n => Ok(n),
    }
}

/// Maps and checks the weights, binds the model, and loads the tokenizer.
fn load<M: CausalLm>(
    info: &BakedInfo,
    offsets: &M::Offsets,
    model_dir: Option<&std::path::Path>,
) -> Result<(M, tokenizers::Tokenizer)> {
    let blob = weights::load(info, model_dir)?;
    let model = M::load(blob, offsets, info.rms_norm_eps, info.rope_theta)?;
    Ok((model, text::load_tokenizer(info.tokenizer_json)?))
}

/// `ln Σ exp(x)`, in f64 with the maximum factored out.
fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln()
}

/// llama-perplexity's method: whole chunks of `ctx` tokens, each evaluated from an empty cache
/// (its first token replaced by BOS when the model adds one), scored on positions
/// `ctx/2 .. ctx-1` by the negative log-likelihood of the next token.
pub fn perplexity<M: CausalLm>(
    info: &BakedInfo,
    offsets: &M::Offsets,
    a: &PerplexityArgs,
    start: Instant,
) -> Result<String> {
    let threads = threads(a.common.threads)?;
    if a.ctx < 2 || a.ctx > M::CONTEXT {
        return Err(EngineError::Usage(format!(
            "--ctx must be between 2 and {}",
            M::CONTEXT
        )));
    }
    let text = std::fs::read_to_string(&a.file).map_err(|source| EngineError::Input {
        path: a.file.clone(),
        source,
    })?;
    let (model, tok) = load::<M>(info, offsets, a.common.model_dir.as_deref())?;
    let ids = text::encode(&tok, &text)?;
    let chunks = (ids.len() / a.ctx).min(a.chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        return Err(EngineError::Prompt(format!(
            "{} is {} tokens, shorter than one chunk of {}",
            a.file.display(),
            ids.len(),
            a.ctx
        )));
    }
    let pool = Pool::new(threads);
    let mut state = model.new_state(a.ctx);
    let first = a.ctx / 2;
    let (mut nll, mut scored) = (0.0f64, 0usize);
    let t0 = Instant::now();
    for c in 0..chunks {
        let chunk = &ids[c * a.ctx..(c + 1) * a.ctx];
        for j in 0..a.ctx - 1 {
            let input = match info.bos_token_id {
                Some(bos) if j == 0 && info.add_bos => bos,
                _ => chunk[j],
            };
            if let Some(logits) = model.step(&mut state, &pool, input, j, j >= first) {
                nll += log_sum_exp(logits) - logits[chunk[j + 1] as usize] as f64;
                scored += 1;
            }
        }
        eprintln!(
            "perplexity: chunk {}/{chunks}: {:.4}",
            c + 1,
            (nll / scored as f64).exp()
        );
    }
    let line = serde_json::json!({
        "model": info.name,
        "precision": info.precision,
        "ppl": (nll / scored as f64).exp(),
        "tokens": ids.len(),
        "scored_tokens": scored,
        "ctx": a.ctx,
        "chunks": chunks,
        "threads": threads,
        "seconds": t0.elapsed().as_secs_f64(),
        "load_time_ms": (t0 - start).as_secs_f64() * 1e3,
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
