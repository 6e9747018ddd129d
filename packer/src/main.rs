//! `clocher-pack SRC [--precision fp32|bf16|fp16|gguf|int8w|int4w] [--q4-map FILE] [--out-dir DIR] [--crate-dir DIR] [--name NAME] [--embed-weights]`
//! `clocher-pack inspect FILE`
//! `clocher-pack ptq SRC --out quant/q4_manifest.json [--bits 4|8] [--group-size 32|64|128|row] [--scheme sym|asym] [--clip none|percentile:P|mse] [--calib FILE] [--gate-cosine C]`

use clap::{Parser, Subcommand};
use clocher_engine::format::Precision;
use clocher_pack::{pack, PackOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Pack a Llama checkpoint (Hugging Face folder or GGUF file) into IEBIN v1 and emit a crate
/// that builds one binary for exactly that model. Prints the crate's path as the last line.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Hugging Face folder (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(required = true)]
    src: Option<PathBuf>,
    /// Weight precision (default: the source's float type; for GGUF block formats, gguf: each
    /// tensor keeps its stored format).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Where to write model.ie.json, model.ie.bin, vocab.json, tokenizer.json [default: models/NAME].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Where to write the generated crate [default: generated/NAME].
    #[arg(long)]
    crate_dir: Option<PathBuf>,
    /// Model name, used for folders and the binary [default: from the source's file name].
    #[arg(long)]
    name: Option<String>,
    /// Compile the weights into the binary, so it runs as one self-contained file.
    #[arg(long)]
    embed_weights: bool,
    /// Per-tensor quantization from `clocher-pack ptq` (with --precision int8w or int4w).
    #[arg(long)]
    q4_map: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a summary of a GGUF file, a safetensors folder or a packed IEBIN model.
    Inspect { file: PathBuf },
    /// Calibrate weight-only quantization: run the model on calibration text, compare each
    /// linear layer's output with original vs quantized weights (cosine), and write a
    /// q4_manifest.json for `--precision int4w|int8w --q4-map`.
    Ptq(clocher_pack::ptq::PtqArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = |r: clocher_pack::Result<String>| match r {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    match &cli.command {
        Some(Command::Inspect { file }) => return done(clocher_pack::inspect::inspect(file)),
        Some(Command::Ptq(a)) => return done(clocher_pack::ptq::run(a)),
        None => {}
    }
    let start = Instant::now();
    let opts = PackOptions {
        src: cli.src.expect("clap requires SRC without a subcommand"),
        out_dir: cli.out_dir,
        crate_dir: cli.crate_dir,
        name: cli.name,
        precision: cli.precision,
        embed_weights: cli.embed_weights,
        q4_map: cli.q4_map,
    };
    match pack(&opts) {
        Ok(p) => {
            eprintln!(
                "packed {} ({}, {} tensors, {:.1} MB) into {} in {:.2}s",
                p.meta.name,
                p.meta.precision.name(),
                p.meta.tensors.len(),
                p.meta.blob.size as f64 / 1e6,
                p.out_dir.display(),
                start.elapsed().as_secs_f64()
            );
            eprintln!(
                "build it with: cargo build --release --manifest-path {}/Cargo.toml",
                p.crate_dir.display()
            );
            println!("{}", p.crate_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
