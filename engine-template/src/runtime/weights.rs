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

/// Bytes a pool thread copies at a time in [`into_huge_pages`]: one huge page.
const HUGE_PAGE: usize = 2 << 20;

/// `blob` copied into anonymous memory backed by transparent huge pages, on the pool's
/// threads, each slice of the source given back to the page cache once copied so the process
/// never holds both (ADR 31). `None` where the kernel gives no huge pages on request, or for a
/// blob under one huge page: the copy would only cost.
pub fn into_huge_pages(blob: &'static [u8], pool: &crate::pool::Pool) -> Option<&'static [u8]> {
    #[cfg(target_os = "linux")]
    {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        if blob.len() < HUGE_PAGE || !(thp.contains("[always]") || thp.contains("[madvise]")) {
            return None;
        }
        let mut anon = memmap2::MmapMut::map_anon(blob.len()).ok()?;
        anon.advise(memmap2::Advice::HugePage).ok()?;
        let (src, dst) = (blob.as_ptr() as usize, anon.as_mut_ptr() as usize);
        let chunks = blob.len().div_ceil(HUGE_PAGE);
        pool.broadcast(&|t, nt| {
            let (c0, c1) = crate::pool::shard(chunks, t, nt, 1);
            for c in c0..c1 {
                let at = c * HUGE_PAGE;
                let n = HUGE_PAGE.min(blob.len() - at);
                // SAFETY: chunk `c` of the new map is this thread's alone and lies inside it;
                // the source is the blob. `MADV_DONTNEED` on a read-only private file map
                // drops its pages from the process; a later read faults them in again.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (src + at) as *const u8,
                        (dst + at) as *mut u8,
                        n,
                    );
                    libc::madvise((src + at) as *mut libc::c_void, n, libc::MADV_DONTNEED);
                }
            }
        });
        let map: &'static memmap2::Mmap = Box::leak(Box::new(anon.make_read_only().ok()?));
        Some(&map[..])
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (blob, pool);
        None
    }
}

#[cfg(test)]
mod tests {
    /// A mapped file of a few huge pages and a ragged end comes back byte for byte, on one
    /// and two threads, and the source map still reads the same after its pages were given
    /// back. (Where the kernel gives no huge pages there is nothing to compare.)
    #[test]
    fn huge_page_copy_keeps_every_byte() {
        for threads in [1, 2] {
            let path = std::env::temp_dir()
                .join(format!("clocher-huge-{}-{threads}.bin", std::process::id()));
            let bytes: Vec<u8> = (0..5 * super::HUGE_PAGE + 4097)
                .map(|i| (i * 31 + i / 4096) as u8)
                .collect();
            std::fs::write(&path, &bytes).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: a file this test wrote and nobody changes.
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            let blob: &'static [u8] = &Box::leak(Box::new(map))[..];
            let pool = crate::pool::Pool::new(threads);
            if let Some(copy) = super::into_huge_pages(blob, &pool) {
                assert!(copy == &bytes[..], "threads={threads}: the copy differs");
                assert!(
                    blob == &bytes[..],
                    "threads={threads}: the source reads differently"
                );
            }
            std::fs::remove_file(&path).unwrap();
        }
    }
}
