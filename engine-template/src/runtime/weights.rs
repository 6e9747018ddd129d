//! Finding, mapping and verifying `model.ie.bin`.

use super::BakedInfo;
use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How the load came to trust the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Compiled into the binary: nothing to check.
    Embedded,
    /// xxh3 over the whole blob (and the result stamped, ADR 34).
    Hash,
    /// The file is the one a stamp records as hashed before: same device, inode, size, mtime
    /// and ctime, for this binary's hash (ADR 34).
    Stamp,
}

impl Check {
    /// The JSON line's `weights_check`.
    pub fn label(self) -> &'static str {
        match self {
            Check::Embedded => "embedded",
            Check::Hash => "hash",
            Check::Stamp => "stamp",
        }
    }
}

/// Bytes a thread faults in per call of [`Mapped::populate`]: 2048 pages, so the two threads'
/// shares stay even at a few calls per blob.
const POPULATE_CHUNK: usize = 8 << 20;

/// A file's stamp counts only where its mtime is at least this old when it is hashed: a
/// write in the same tick of a coarse file-system clock would leave the mtime as it was
/// (git's "racily clean" entries).
const STAMP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// The weights blob for this binary, mapped (and kept for the process's lifetime) but not yet
/// read: its pages are faulted in by [`Mapped::populate`], on as many threads as call it, and
/// its content is checked by [`Mapped::check`].
pub struct Mapped {
    pub blob: &'static [u8],
    /// `None` for embedded weights.
    file: Option<MappedFile>,
    /// The next byte offset for [`Mapped::populate`] to claim.
    next: AtomicUsize,
}

struct MappedFile {
    path: PathBuf,
    xxh3: u64,
    /// What a stamp for this file and hash says; `None` where there is no file identity to
    /// record (not Unix) or the file is too new to stamp.
    stamp: Option<String>,
    stamped: bool,
}

/// Maps the weights blob for this binary: the embedded one, or `model.ie.bin` in `dir` (else
/// the baked folder), after checking its size and looking for its stamp.
pub fn map(info: &BakedInfo, dir: Option<&Path>) -> Result<Mapped> {
    if let Some(blob) = info.embedded {
        return Ok(Mapped {
            blob,
            file: None,
            next: AtomicUsize::new(blob.len()),
        });
    }
    let path = dir
        .unwrap_or(Path::new(info.model_dir))
        .join(crate::format::BLOB_FILE);
    map_file(path, info.blob_size, info.blob_xxh3)
}

fn map_file(path: PathBuf, size: u64, xxh3: u64) -> Result<Mapped> {
    let io = |source: std::io::Error| EngineError::WeightsIo {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::Weights {
            path: path.clone(),
            msg: "file not found (pass --model-dir or set IE_MODEL_DIR to the packed model folder)"
                .into(),
        },
        _ => io(e),
    })?;
    let meta = file.metadata().map_err(io)?;
    if meta.len() != size {
        return Err(EngineError::Weights {
            path: path.clone(),
            msg: format!(
                "size is {} bytes but this binary was built for {size} bytes (truncated or a different model)",
                meta.len()
            ),
        });
    }
    // SAFETY: the file is opened read-only; IEBIN files are written once and renamed into place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    // Where the blob must be read from disk, the kernel then reads it into 2 MiB folios that
    // the map takes whole, as it keeps a blob the packer wrote (ADR 39). Best effort.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let blob: &'static [u8] = &Box::leak(Box::new(map))[..];
    let stamp = stamp_for(&meta, xxh3);
    let stamped = stamp.as_deref().is_some_and(|want| {
        read_bounded(&stamp_path(&path), 4096).is_some_and(|have| have == want.as_bytes())
    });
    Ok(Mapped {
        blob,
        file: Some(MappedFile {
            path,
            xxh3,
            stamp,
            stamped,
        }),
        next: AtomicUsize::new(0),
    })
}

impl Mapped {
    /// Faults the blob's pages in, a chunk at a time, until no chunk is left to claim. Any
    /// number of threads may call it at once. One `MADV_POPULATE_READ` maps a chunk's pages far
    /// cheaper than one fault per 4 KiB page later; where the kernel lacks it (before Linux
    /// 5.14) the pages fault in as they are read.
    pub fn populate(&self) {
        loop {
            let at = self.next.fetch_add(POPULATE_CHUNK, Ordering::Relaxed);
            if at >= self.blob.len() {
                return;
            }
            populate_range(self.blob, at, POPULATE_CHUNK.min(self.blob.len() - at));
        }
    }

    /// Checks the blob's content: its stamp, else its xxh3 against the one this binary was
    /// built for, stamping it where it matches.
    pub fn check(&self) -> Result<Check> {
        let Some(f) = &self.file else {
            return Ok(Check::Embedded);
        };
        if f.stamped {
            return Ok(Check::Stamp);
        }
        let hash = xxhash_rust::xxh3::xxh3_64(self.blob);
        if hash != f.xxh3 {
            return Err(EngineError::Weights {
                path: f.path.clone(),
                msg: format!(
                    "content hash {hash:016x} differs from {:016x}, the weights this binary was built for",
                    f.xxh3
                ),
            });
        }
        if let Some(stamp) = &f.stamp {
            // Best effort: a read-only folder only means the next load hashes again.
            let _ = super::write_atomic(&stamp_path(&f.path), stamp.as_bytes());
        }
        Ok(Check::Hash)
    }
}

#[cfg(target_os = "linux")]
fn populate_range(blob: &'static [u8], at: usize, len: usize) {
    // SAFETY: the range lies inside the blob's live mapping, leaked for the process's
    // lifetime; populating only reads it in.
    unsafe {
        libc::madvise(
            blob.as_ptr().add(at) as *mut libc::c_void,
            len,
            libc::MADV_POPULATE_READ,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn populate_range(_: &'static [u8], _: usize, _: usize) {}

/// The stamp beside the blob at `path`.
fn stamp_path(blob: &Path) -> PathBuf {
    blob.with_file_name(crate::format::STAMP_FILE)
}

/// What the stamp of a file with metadata `meta` and content hash `xxh3` holds: one JSON line
/// naming the file's identity. `None` off Unix, or for a file modified within the last
/// [`STAMP_MIN_AGE`].
fn stamp_for(meta: &std::fs::Metadata, xxh3: u64) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let age = std::time::SystemTime::now()
            .duration_since(meta.modified().ok()?)
            .ok()?;
        (age >= STAMP_MIN_AGE).then(|| {
            serde_json::json!({
                "xxh3": format!("{xxh3:016x}"),
                "size": meta.size(),
                "dev": meta.dev(),
                "ino": meta.ino(),
                "mtime": [meta.mtime(), meta.mtime_nsec()],
                "ctime": [meta.ctime(), meta.ctime_nsec()],
            })
            .to_string()
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (meta, xxh3);
        None
    }
}

/// The file at `path` if it is a regular file of at most `max` bytes; `None` if it is missing,
/// unreadable, longer, or not a regular file (a FIFO would block the read).
fn read_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

/// Bytes a pool thread copies at a time in [`into_huge_pages`]: one huge page.
const HUGE_PAGE: usize = 2 << 20;

/// `blob` copied into anonymous memory backed by transparent huge pages, on the pool's
/// threads, each slice of the source given back to the page cache once copied so the process
/// never holds both (ADR 31). `None` where the kernel gives no huge pages on request, for a
/// blob under one huge page, or where huge pages of the page cache already map most of it
/// (ADR 39): the copy would only cost.
pub fn into_huge_pages(blob: &'static [u8], pool: &crate::pool::Pool) -> Option<&'static [u8]> {
    #[cfg(target_os = "linux")]
    {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        if blob.len() < HUGE_PAGE
            || !(thp.contains("[always]") || thp.contains("[madvise]"))
            || pmd_mapped(blob) >= blob.len() / 2
        {
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

/// Bytes of `blob`'s mapping that huge pages of the page cache back (`FilePmdMapped` in
/// `/proc/self/smaps`): most of it where the packer wrote the file in whole huge pages and
/// the page cache kept them (ADR 39), so copying it into huge pages would only cost. 0 where
/// the mapping or the field is not found.
#[cfg(target_os = "linux")]
fn pmd_mapped(blob: &[u8]) -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let start = format!("{:x}-", blob.as_ptr() as usize);
    let mut fields = (smaps.lines().skip_while(|l| !l.starts_with(&start)).skip(1))
        .take_while(|l| l.starts_with(|c: char| c.is_ascii_uppercase()));
    fields
        .find_map(|l| l.strip_prefix("FilePmdMapped:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
        .map_or(0, |kb| kb << 10)
}

#[cfg(test)]
mod tests {
    /// A blob is hashed and stamped on its first load and trusted by its stamp after that;
    /// any change to the file (content, or only its times), a garbage stamp, or a binary built
    /// for another hash sends the load back to the hash. Every load faults the whole blob in
    /// over two threads.
    #[cfg(unix)]
    #[test]
    fn stamp_skips_the_hash_only_for_the_same_file() {
        use super::{map_file, stamp_path, Check};
        let dir = std::env::temp_dir().join(format!("clocher-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.ie.bin");
        let bytes: Vec<u8> = (0..3 * super::POPULATE_CHUNK + 999)
            .map(|i| (i * 7 + i / 999) as u8)
            .collect();
        let xxh3 = xxhash_rust::xxh3::xxh3_64(&bytes);
        let write_old = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(an_hour_ago).unwrap();
        };
        let load = |want: u64| {
            let m = map_file(path.clone(), bytes.len() as u64, want)?;
            std::thread::scope(|s| {
                s.spawn(|| m.populate());
                m.populate();
            });
            assert!(
                m.blob == std::fs::read(&path).unwrap(),
                "the map reads differently"
            );
            m.check()
        };
        write_old(&bytes);
        assert_eq!(load(xxh3).unwrap(), Check::Hash);
        assert!(stamp_path(&path).exists(), "the first load wrote no stamp");
        assert_eq!(load(xxh3).unwrap(), Check::Stamp);
        // Another binary's hash: the stamp is not for it.
        let err = load(xxh3 ^ 1).unwrap_err().to_string();
        assert!(err.contains("content hash"), "{err}");
        assert_eq!(load(xxh3).unwrap(), Check::Stamp);
        // The same bytes written again (new ctime), then one byte changed in place.
        write_old(&bytes);
        assert_eq!(load(xxh3).unwrap(), Check::Hash);
        let mut changed = bytes.clone();
        changed[bytes.len() / 2] ^= 1;
        write_old(&changed);
        let err = load(xxh3).unwrap_err().to_string();
        assert!(err.contains("content hash"), "{err}");
        write_old(&bytes);
        assert_eq!(load(xxh3).unwrap(), Check::Hash);
        std::fs::write(stamp_path(&path), b"{\"xxh3\":").unwrap();
        assert_eq!(load(xxh3).unwrap(), Check::Hash);
        assert_eq!(load(xxh3).unwrap(), Check::Stamp);
        // A file just written is too new to stamp.
        std::fs::write(&path, &bytes).unwrap();
        std::fs::remove_file(stamp_path(&path)).unwrap();
        assert_eq!(load(xxh3).unwrap(), Check::Hash);
        assert!(
            !stamp_path(&path).exists(),
            "a file just written was stamped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
