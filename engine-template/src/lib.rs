//! `clocher-engine`: the runtime every generated model crate depends on.
//!
//! - [`format`]: the IEBIN v1 schema (`model.ie.json`), shared by packer, codegen and runtime.
//! - [`kernels`]: one scalar `*_ref` kernel per op and weight type (oracle and fallback), plus
//!   AVX2+FMA versions picked once at run time.
//! - [`model`]: the Llama forward pass, generic over weight type and const-generic over every
//!   dimension, so a generated crate monomorphizes it for exactly one model.
//! - [`pool`]: the persistent thread pool.
//! - `runtime` and `cli` (feature `runtime`): weights loading, tokenizer, sampler, metrics and
//!   the binary's command line.
//! - `codegen` (feature `codegen`): the code generator behind `clocher_macros::model!`.

pub mod dtype;
pub mod error;
pub mod format;
pub mod kernels;
pub mod model;
pub mod pool;

#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "codegen")]
pub mod codegen;
#[cfg(feature = "runtime")]
pub mod runtime;

pub use error::EngineError;

/// mimalloc for every binary with the runtime: it builds the tokenizer's 100k small strings
/// and hash maps in two thirds of glibc's time, 12 ms of the load (ADR 21).
#[cfg(feature = "runtime")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
