//! Finding, mapping and verifying `model.ie.bin`.

use super::BakedInfo;
use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

/// The weights blob for this binary: the embedded one, or `model.ie.bin` in `dir` (else the
/// baked folder), memory-mapped, size- and hash-checked, and kept for the process's lifetime.
pub fn load(info: &BakedInfo, dir: Option<&Path>) -> Result<&'static [u8]> {
    if let Some(blob) = info.embedded {
        return Ok(blob);
    }
    let path: PathBuf = dir
        .unwrap_or(Path::new(info.model_dir))
        .join(crate::format::BLOB_FILE);
    let err = |msg: String| EngineError::Weights {
        path: path.clone(),
        msg,
    };
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err(
            "file not found (pass --model-dir or set IE_MODEL_DIR to the packed model folder)"
                .into(),
        ),
        _ => EngineError::WeightsIo {
            path: path.clone(),
            source: e,
        },
    })?;
    let len = file
        .metadata()
        .map_err(|e| EngineError::WeightsIo {
            path: path.clone(),
            source: e,
        })?
        .len();
    if len != info.blob_size {
        return Err(err(format!(
            "size is {len} bytes but this binary was built for {} bytes (truncated or a different model)",
            info.blob_size
        )));
    }
    // Populate: the hash below and the first token read every page anyway, and faulting them
    // in one call is much cheaper than one fault per 4 KiB page.
    // SAFETY: the file is opened read-only; IEBIN files are written once and renamed into place.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| {
        EngineError::WeightsIo {
            path: path.clone(),
            source: e,
        }
    })?;
    let hash = xxhash_rust::xxh3::xxh3_64(&map);
    if hash != info.blob_xxh3 {
        return Err(err(format!(
            "content hash {hash:016x} differs from {:016x}, the weights this binary was built for",
            info.blob_xxh3
        )));
    }
    Ok(Box::leak(Box::new(map)))
}
