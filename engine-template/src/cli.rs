//! The command line of every generated binary. One JSON line on stdout; the rest on stderr.

use crate::error::{EngineError, Result};
use crate::model::{CausalLm, Logits};
use crate::pool::Pool;
use crate::runtime::bench::{self, MemPressure};
use crate::runtime::{metrics, sampler, text, weights, BakedInfo};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
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
    /// Benchmark: every prompt of a file, --runs times, prefill then exactly --max-new greedy
    /// tokens (end-of-sequence ignored, as llama-bench does); one JSON line per run, then a
    /// summary with spread, the machine's read bandwidth and the fraction of it decode uses.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// File of prompts, one per line.
    #[arg(long, env = "PROMPTS")]
    pub prompts: PathBuf,
    /// Runs over the whole prompt file.
    #[arg(long, env = "RUNS", default_value_t = 3)]
    pub runs: usize,
    /// Tokens generated after each prompt.
    #[arg(long, default_value_t = 128)]
    pub max_new: usize,
    /// Put the summary as a row into this markdown file's bench table (docs/PERFORMANCE.md).
    #[arg(long)]
    pub merge: Option<PathBuf>,
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
    /// Tokens per forward pass (1 runs the decode path, token by token, as generation does).
    #[arg(long, default_value_t = crate::model::llama::BATCH)]
    pub batch: usize,
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
    crate::kernels::init_act8(info.precision != "int8w");
    crate::model::init_kv_f16(matches!(info.precision, "int8w" | "int4w" | "gguf"));
    let common = match &cli.command {
        Some(Command::Perplexity(a)) => &a.common,
        Some(Command::Bench(a)) => &a.common,
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
        Some(Command::Bench(a)) => bench::<M>(info, offsets, a),
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
    let prompt = args.prompt.clone().unwrap_or_default();
    let prompt = if args.chat {
        let tmpl = info
            .chat_template
            .ok_or_else(|| EngineError::ChatTemplate("this model has no chat template".into()))?;
        text::render_chat(tmpl, &prompt, info.bos_token, info.eos_token)?
    } else {
        prompt
    };
    let pool = Pool::new(threads);
    let (blob, model, check, tok, ids) = load::<M>(
        info,
        offsets,
        args.common.model_dir.as_deref(),
        &pool,
        &[&prompt],
    )?;
    let ids = ids.into_iter().next().unwrap_or_default();
    if ids.is_empty() {
        return Err(EngineError::Prompt("the prompt is empty".into()));
    }
    if ids.len() >= ctx {
        return Err(EngineError::Prompt(format!(
            "the prompt is {} tokens, longer than the context of {ctx} tokens",
            ids.len()
        )));
    }
    let mut state = model.new_state(ctx);
    let mut sampler = sampler::Sampler::new(sampler::SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    });
    let load_time = start.elapsed();

    let mut pressure = MemPressure::from_env(blob)?;
    let mut model = model;
    let g = generate(
        &mut model,
        &mut huge_pages(info, offsets, blob),
        &mut state,
        &pool,
        &ids,
        &mut sampler,
        &mut Stop {
            max_new: args.max_new.min(ctx - ids.len()),
            eos: info.eos_token_ids,
            dump_logits: args.dump_logits.as_deref(),
            pressure: pressure.as_mut(),
        },
    )?;
    let (out, latencies, prefill) = (g.tokens, g.latencies, g.prefill_s);
    let wall = prefill + g.decode_s;
    let text = tok.decode(&out)?;
    let line = serde_json::json!({
        "model": info.name,
        "precision": info.precision,
        "isa": crate::kernels::isa().name(),
        "activations": ActPath::of::<M>(info).label(),
        "prefill_activations": prefill_activations::<M>(info),
        "kv_cache": kv_cache(),
        "threads": threads,
        "affinity": pool.affinity(),
        "prompt_tokens": ids.len(),
        "generated_tokens": out.len(),
        "token_ids": out,
        "text": text,
        "wall_time_s": wall,
        "tps_true": if wall > 0.0 { out.len() as f64 / wall } else { 0.0 },
        "ttft_ms": prefill * 1e3,
        "latency_p50_ms": metrics::percentile(&latencies, 50.0),
        "latency_p95_ms": metrics::percentile(&latencies, 95.0),
        "prefill_tps": ids.len() as f64 / prefill,
        "rss_peak_mb": metrics::rss_peak_mb(),
        "load_time_ms": load_time.as_secs_f64() * 1e3,
        "weights_check": check.label(),
        "memory_pressure": pressure.as_ref().map(MemPressure::json),
    });
    Ok(line.to_string())
}

/// The KV cache's element type, as the JSON lines report it.
fn kv_cache() -> &'static str {
    if crate::model::kv_f16() {
        "f16"
    } else {
        "f32"
    }
}

fn threads(arg: Option<usize>) -> Result<usize> {
    match arg.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())) {
        0 => Err(EngineError::Usage("--threads must be at least 1".into())),
        n => Ok(n),
    }
}

/// What [`load`] gives: the weights, the model on them, how they were checked, a tokenizer
/// that decodes, and the ids of the texts to encode.
type Loaded<M> = (
    &'static [u8],
    M,
    weights::Check,
    text::Text<'static>,
    Vec<Vec<u32>>,
);

/// Builds the tokenizer on this thread while the pool's last worker maps and checks the
/// weights and binds the model (ADR 24), and both threads fault the weights' pages in, the
/// caller once its tokenizer is built (ADR 34). A worker thread just spawned often first runs
/// about 5 ms late (a halted virtual CPU waking up), so the caller, already running, takes the
/// tokenizer. Loading on the pool, not on a thread of its own, leaves that worker running on
/// its own core when prefill starts: a worker spawned after the load shared the caller's core
/// for the first 10-15 ms of prefill (its first ten layers ran at half speed) until the
/// scheduler moved it. The tokenizer is built for `texts` alone, which it encodes: its BPE
/// model holds only the merges that can apply to them (ADR 38) and the tokens those need (ADR
/// 40), so it encodes nothing else reliably; it decodes anything, from the digest.
fn load<M: CausalLm>(
    info: &BakedInfo,
    offsets: &M::Offsets,
    model_dir: Option<&std::path::Path>,
    pool: &Pool,
    texts: &[&str],
) -> Result<Loaded<M>> {
    let (weights, tok) = (Mutex::new(None), Mutex::new(None));
    let mapped = std::sync::OnceLock::new();
    let tok_load = text::TokenizerLoad::new(info.tokenizer_json, info.tokenizer_digest);
    pool.broadcast(&|t, nt| {
        if t == nt - 1 {
            let w = weights::map(info, model_dir).and_then(|m| {
                let m: &weights::Mapped = mapped.get_or_init(|| m);
                m.populate();
                let check = m.check()?;
                let model = M::load(m.blob, offsets, info.rms_norm_eps, info.rope_theta)?;
                Ok((m.blob, model, check))
            });
            *weights.lock().unwrap() = Some(w);
        }
        if t == 0 {
            let t = tok_load.finish_for(texts).and_then(|t| {
                let ids = texts.iter().map(|s| t.encode(s));
                Ok((ids.collect::<Result<Vec<_>>>()?, t))
            });
            *tok.lock().unwrap() = Some(t);
            if let Some(m) = mapped.get() {
                m.populate();
            }
        }
    });
    fn taken<T>(m: Mutex<Option<T>>) -> T {
        m.into_inner().unwrap().expect("the pool ran every part")
    }
    let (blob, model, check) = taken(weights)?;
    let (ids, tok) = taken(tok)?;
    Ok((blob, model, check, tok, ids))
}

/// The weights moved into huge pages, and a model on them.
type Moved<M> = Option<(&'static [u8], M)>;

/// The weights moved into huge pages ([`weights::into_huge_pages`], ADR 31) and the model on
/// them, the first time it is called where the kernel gives them; `None` after that, or
/// without them.
fn huge_pages<'a, M: CausalLm>(
    info: &'a BakedInfo,
    offsets: &'a M::Offsets,
    blob: &'static [u8],
) -> impl FnMut(&Pool) -> Moved<M> + 'a {
    let mut done = false;
    move |pool| {
        if std::mem::replace(&mut done, true) || info.embedded.is_some() {
            return None;
        }
        let blob = weights::into_huge_pages(blob, pool)?;
        Some((
            blob,
            M::load(blob, offsets, info.rms_norm_eps, info.rope_theta).ok()?,
        ))
    }
}

/// When a generation stops, and what it does on the way.
struct Stop<'a> {
    max_new: usize,
    /// End-of-sequence tokens (empty: generate exactly `max_new`).
    eos: &'a [u32],
    dump_logits: Option<&'a std::path::Path>,
    pressure: Option<&'a mut MemPressure>,
}

struct Generation {
    tokens: Vec<u32>,
    /// Milliseconds between consecutive generated tokens.
    latencies: Vec<f64>,
    prefill_s: f64,
    /// From the first generated token to the last.
    decode_s: f64,
}

/// Prefill (batched), then decoding one token at a time. Before each decode step, `upgrade`
/// may give the weights moved into huge pages and a model on them (ADR 31), which decode then
/// runs.
fn generate<M: CausalLm>(
    model: &mut M,
    upgrade: &mut dyn FnMut(&Pool) -> Moved<M>,
    state: &mut M::State,
    pool: &Pool,
    ids: &[u32],
    sampler: &mut sampler::Sampler,
    stop: &mut Stop,
) -> Result<Generation> {
    let t0 = Instant::now();
    // Prefill: the whole prompt in batches, logits only at the last position.
    let logits = model
        .forward(state, pool, ids, 0, Logits::Last)
        .expect("the last position's logits were asked for");
    if let Some(path) = stop.dump_logits {
        write_f32_atomic(path, logits)?;
    }
    let mut next = sampler.sample(logits);
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    let mut latencies = Vec::new();
    if stop.max_new > 0 {
        out.push(next);
    }
    let t1 = Instant::now();
    let mut last = t1;
    let mut touched = 0u64;
    while out.len() < stop.max_new && !stop.eos.contains(&next) {
        if let Some((blob, m)) = upgrade(pool) {
            *model = m;
            if let Some(p) = stop.pressure.as_deref_mut() {
                p.follow(blob);
            }
        }
        let pos = ids.len() + out.len() - 1;
        let logits = model
            .step(state, pool, next, pos, true)
            .expect("logits were asked for");
        next = sampler.sample(logits);
        out.push(next);
        if let Some(p) = stop.pressure.as_deref_mut() {
            touched = touched.wrapping_add(p.touch());
        }
        let now = Instant::now();
        latencies.push((now - last).as_secs_f64() * 1e3);
        last = now;
    }
    std::hint::black_box(touched);
    Ok(Generation {
        tokens: out,
        latencies,
        prefill_s,
        decode_s: t1.elapsed().as_secs_f64(),
    })
}

/// `<bin> bench`: JSON lines per run, then the summary (returned).
pub fn bench<M: CausalLm>(info: &BakedInfo, offsets: &M::Offsets, a: &BenchArgs) -> Result<String> {
    let threads = threads(a.common.threads)?;
    let text = std::fs::read_to_string(&a.prompts).map_err(|source| EngineError::Input {
        path: a.prompts.clone(),
        source,
    })?;
    let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if prompts.is_empty() || a.runs == 0 {
        return Err(EngineError::Usage(format!(
            "bench needs at least one run and one prompt ({} has none)",
            a.prompts.display()
        )));
    }
    let pool = Pool::new(threads);
    let (blob, model, _, _, ids) = load::<M>(
        info,
        offsets,
        a.common.model_dir.as_deref(),
        &pool,
        &prompts,
    )?;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 || longest + a.max_new > M::CONTEXT {
        return Err(EngineError::Prompt(format!(
            "every prompt needs 1 to {} tokens with --max-new {}",
            M::CONTEXT.saturating_sub(a.max_new),
            a.max_new
        )));
    }
    let mut pressure = MemPressure::from_env(blob)?;
    let (mut model, mut upgrade) = (model, huge_pages(info, offsets, blob));
    let (mut pp, mut tg, mut p50, mut p95) = (vec![], vec![], vec![], vec![]);
    // Each run's decode against the read bandwidth probed right after it (ADR 30); the peak
    // RSS is taken after the first run, before the probe's buffer exists.
    let (mut gbps, mut fractions, mut rss, mut probe) = (vec![], vec![], 0.0, None);
    for run in 1..=a.runs {
        for (i, ids) in ids.iter().enumerate() {
            let mut state = model.new_state(ids.len() + a.max_new);
            let mut sampler = sampler::Sampler::new(sampler::SamplerConfig {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0,
            });
            let g = generate(
                &mut model,
                &mut upgrade,
                &mut state,
                &pool,
                ids,
                &mut sampler,
                &mut Stop {
                    max_new: a.max_new,
                    eos: &[],
                    dump_logits: None,
                    pressure: pressure.as_mut(),
                },
            )?;
            let decoded = g.tokens.len().saturating_sub(1);
            let run_tg = decoded as f64 / g.decode_s;
            let probe = probe.get_or_insert_with(|| {
                rss = metrics::rss_peak_mb();
                bench::Probe::new()
            });
            let run_gbps = probe.read_gbps(&pool);
            let fraction = run_tg * info.bytes_per_token as f64 / 1e9 / run_gbps;
            let line = serde_json::json!({
                "bench": "run",
                "run": run,
                "prompt": i,
                "prompt_tokens": ids.len(),
                "generated_tokens": g.tokens.len(),
                "pp_tps": ids.len() as f64 / g.prefill_s,
                "tg_tps": run_tg,
                "ttft_ms": g.prefill_s * 1e3,
                "latency_p50_ms": metrics::percentile(&g.latencies, 50.0),
                "latency_p95_ms": metrics::percentile(&g.latencies, 95.0),
                "read_gbps": run_gbps,
                "bandwidth_fraction": fraction,
            });
            println!("{line}");
            pp.push(ids.len() as f64 / g.prefill_s);
            tg.push(run_tg);
            gbps.push(run_gbps);
            fractions.push(fraction);
            p50.push(metrics::percentile(&g.latencies, 50.0));
            p95.push(metrics::percentile(&g.latencies, 95.0));
        }
    }
    let gbps = metrics::percentile(&gbps, 50.0);
    let fraction = metrics::percentile(&fractions, 50.0);
    let (cpu, flags) = bench::cpu();
    let isa = crate::kernels::isa().name();
    let (pp_s, tg_s) = (bench::spread(&pp), bench::spread(&tg));
    let summary = serde_json::json!({
        "bench": "summary",
        "model": info.name,
        "precision": info.precision,
        "isa": isa,
        "activations": ActPath::of::<M>(info).label(),
        "prefill_activations": prefill_activations::<M>(info),
        "kv_cache": kv_cache(),
        "threads": threads,
        "affinity": pool.affinity(),
        "runs": a.runs,
        "prompts": prompts.len(),
        "max_new": a.max_new,
        "pp_tps": pp_s,
        "tg_tps": tg_s,
        "latency_p50_ms": metrics::percentile(&p50, 50.0),
        "latency_p95_ms": metrics::percentile(&p95, 50.0),
        "rss_peak_mb": rss,
        "weights_bytes_per_token": info.bytes_per_token,
        "read_gbps": gbps,
        "bandwidth_fraction": fraction,
        "cpu": cpu,
        "cpu_flags": flags,
        "memory_pressure": pressure.as_ref().map(MemPressure::json),
    });
    if let Some(path) = &a.merge {
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let mut model_cell = info.name.to_string();
        if let Some(p) = &pressure {
            model_cell += &format!(" (+{} B/token touched)", p.bytes);
        }
        let isa_cell = match ActPath::of::<M>(info) {
            ActPath::I8 => format!("{isa}, i8 activations"),
            ActPath::HeadI8 => format!("{isa}, i8 head"),
            ActPath::F32 => isa.to_string(),
        };
        let row = format!(
            "| {} | {cpu} ({}) | {model_cell} | {} | {isa_cell} | {threads} | {:.1} ({:.1}-{:.1}) | {:.1} ({:.1}-{:.1}) | {:.2} / {:.2} | {rss:.0} | {gbps:.1} | {:.0}% |",
            today(),
            flags.join(" "),
            info.precision,
            f(&pp_s, "median"),
            f(&pp_s, "min"),
            f(&pp_s, "max"),
            f(&tg_s, "median"),
            f(&tg_s, "min"),
            f(&tg_s, "max"),
            metrics::percentile(&p50, 50.0),
            metrics::percentile(&p95, 50.0),
            fraction * 100.0,
        );
        bench::merge_row(path, &row)?;
    }
    Ok(summary.to_string())
}

/// How the decode GEMVs take activations (see `kernels::init_act8` and `kernels::act8_head`).
#[derive(Clone, Copy, PartialEq)]
enum ActPath {
    /// Quantized weights run the 8-bit activation kernels (int8, int4, Q4_0, Q4_1, Q5_0, Q5_1,
    /// Q8_0, Q4_K and Q6_K have them; other GGUF formats in a file keep f32 activations).
    I8,
    /// Only the output head does (int8w by default).
    HeadI8,
    F32,
}

impl ActPath {
    fn of<M: CausalLm>(info: &BakedInfo) -> ActPath {
        let quantized = matches!(info.precision, "int8w" | "int4w" | "gguf");
        if quantized && crate::kernels::act8() {
            ActPath::I8
        } else if quantized && M::HEAD_ACT8 && crate::kernels::act8_head() {
            ActPath::HeadI8
        } else {
            ActPath::F32
        }
    }

    /// The JSON lines' `activations`.
    fn label(self) -> &'static str {
        match self {
            ActPath::I8 => "i8",
            ActPath::HeadI8 => "f32, head i8",
            ActPath::F32 => "f32",
        }
    }
}

/// How prefill's batched GEMMs take activations: `"i8"` where the decode path is 8-bit and the
/// weights have a batched 8-bit kernel (int4, Q4_0-Q5_1, Q4_K, Q8_0: [`CausalLm::GEMM_Q8`]),
/// `"f32"` otherwise.
fn prefill_activations<M: CausalLm>(info: &BakedInfo) -> &'static str {
    if M::GEMM_Q8 && ActPath::of::<M>(info) == ActPath::I8 {
        "i8"
    } else {
        "f32"
    }
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    // SAFETY: `time` accepts a null pointer; `gmtime_r` writes only into `tm`.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::gmtime_r(&t, &mut tm).is_null() {
            return "unknown date".into();
        }
        format!(
            "{:04}-{:02}-{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        )
    }
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
    if a.batch == 0 {
        return Err(EngineError::Usage("--batch must be at least 1".into()));
    }
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
    let pool = Pool::new(threads);
    let (_, model, _, _, ids) = load::<M>(
        info,
        offsets,
        a.common.model_dir.as_deref(),
        &pool,
        &[&text],
    )?;
    let ids = ids.into_iter().next().unwrap_or_default();
    let chunks = (ids.len() / a.ctx).min(a.chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        return Err(EngineError::Prompt(format!(
            "{} is {} tokens, shorter than one chunk of {}",
            a.file.display(),
            ids.len(),
            a.ctx
        )));
    }
    let mut state = model.new_state(a.ctx);
    let first = a.ctx / 2;
    let (mut nll, mut scored) = (0.0f64, 0usize);
    let t0 = Instant::now();
    for c in 0..chunks {
        let chunk = &ids[c * a.ctx..(c + 1) * a.ctx];
        let mut input = chunk[..a.ctx - 1].to_vec();
        if let (Some(bos), true) = (info.bos_token_id, info.add_bos) {
            input[0] = bos;
        }
        // The chunk in pieces of --batch tokens; logits of positions first..ctx-1 predict the
        // next token.
        for start in (0..input.len()).step_by(a.batch) {
            let end = (start + a.batch).min(input.len());
            let want = if end <= first {
                Logits::None
            } else {
                Logits::From(first.saturating_sub(start))
            };
            let logits = model
                .forward(&mut state, &pool, &input[start..end], start, want)
                .unwrap_or(&[]);
            for (j, row) in (first.max(start)..end).zip(logits.chunks_exact(M::VOCAB)) {
                nll += log_sum_exp(row) - row[chunk[j + 1] as usize] as f64;
                scored += 1;
            }
        }
        eprintln!(
            "perplexity: chunk {}/{chunks}: {:.4}",
            c + 1,
            (nll / scored as f64).exp()
        );
    }
    // Batches run prefill's GEMM; a forward call of one token takes the decode kernels.
    let path = ActPath::of::<M>(info);
    let batched = match path {
        ActPath::I8 if M::GEMM_Q8 => "i8",
        ActPath::I8 if M::HEAD_GEMM_Q8 => "f32, head i8",
        _ => "f32",
    };
    let activations = if a.batch == 1 {
        path.label()
    } else if single_token_calls(a.ctx - 1, a.batch) && batched != path.label() {
        "mixed"
    } else {
        batched
    };
    let line = serde_json::json!({
        "model": info.name,
        "precision": info.precision,
        "ppl": (nll / scored as f64).exp(),
        "tokens": ids.len(),
        "scored_tokens": scored,
        "ctx": a.ctx,
        "chunks": chunks,
        "batch": a.batch,
        "activations": activations,
        "kv_cache": kv_cache(),
        "threads": threads,
        "seconds": t0.elapsed().as_secs_f64(),
        "load_time_ms": (t0 - start).as_secs_f64() * 1e3,
    });
    Ok(line.to_string())
}

/// Whether scoring `len` tokens in pieces of `batch` makes any one-token forward call (a piece,
/// or the tail of a piece split into `llama::BATCH`-token chunks).
fn single_token_calls(len: usize, batch: usize) -> bool {
    let b = crate::model::llama::BATCH;
    let piece_has_single = |p: usize| p == 1 || p % b == 1;
    (len >= batch && piece_has_single(batch)) || piece_has_single(len % batch)
}

/// Writes `values` as little-endian f32 to a temporary name, then renames it into place.
fn write_f32_atomic(path: &std::path::Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    crate::runtime::write_atomic(path, &bytes).map_err(|source| EngineError::Output {
        path: path.to_path_buf(),
        source,
    })
}
