//! The engine's one error type. Messages start with what was being done.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading weights {path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("loading weights {path}: {source}")]
    WeightsIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading tokenizer: {0}")]
    Tokenizer(String),
    #[error("rendering chat template: {0}")]
    ChatTemplate(String),
    #[error("tokenizing prompt: {0}")]
    Prompt(String),
    #[error("reading {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
