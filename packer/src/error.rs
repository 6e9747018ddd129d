//! The packer's one error type. Every message names the file and what was being done.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad or unsupported input: `path` is the offending file.
    #[error("reading {path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = PackError> = std::result::Result<T, E>;

pub(crate) fn input(path: impl Into<PathBuf>, msg: impl Into<String>) -> PackError {
    PackError::Input {
        path: path.into(),
        msg: msg.into(),
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackError {
    let path = path.into();
    move |source| PackError::Io { path, source }
}

pub(crate) fn write_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackError {
    let path = path.into();
    move |source| PackError::Write { path, source }
}
