//! Benchmark helpers for `<bin> bench`: the machine's read bandwidth, the memory-pressure
//! option, summaries with spread, and merging results into `docs/PERFORMANCE.md`.

use crate::error::{EngineError, Result};
use crate::pool::{Pool, SyncSlice};
use std::path::Path;
use std::time::Instant;

/// Bytes streamed by [`Probe::read_gbps`].
pub const BANDWIDTH_BYTES: usize = 512 << 20;

/// The read-bandwidth probe's buffer, allocated once: `bench` probes after every run, so each
/// run's decode is set against the bandwidth of the same moment (ADR 30).
pub struct Probe(Vec<f32>);

impl Probe {
    pub fn new() -> Probe {
        // Filled with ones, so every page is faulted in before timing.
        Probe(vec![1.0f32; BANDWIDTH_BYTES / 4])
    }

    /// Read bandwidth in GB/s (1e9 bytes/s) with the pool's threads: the best of three passes
    /// of a plain sum over the buffer, each thread summing its own contiguous shard, as a
    /// decode GEMV streams its rows.
    pub fn read_gbps(&self, pool: &Pool) -> f64 {
        let data = &self.0[..];
        let mut sums = vec![0.0f32; pool.threads()];
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t0 = Instant::now();
            let out = SyncSlice::new(&mut sums);
            pool.broadcast(&|t, nt| {
                let (a, b) = crate::pool::shard(data.len(), t, nt, 1024);
                // 16 independent lanes: the compiler vectorizes it without reassociating.
                let mut acc = [0.0f32; 16];
                for c in data[a..b].chunks_exact(16) {
                    for (s, v) in acc.iter_mut().zip(c) {
                        *s += v;
                    }
                }
                // SAFETY: slot `t` belongs to thread `t` alone.
                unsafe { out.range(t, 1)[0] = acc.iter().sum() };
            });
            let secs = t0.elapsed().as_secs_f64();
            std::hint::black_box(&sums);
            best = best.max(std::mem::size_of_val(data) as f64 / secs / 1e9);
        }
        best
    }
}

impl Default for Probe {
    fn default() -> Probe {
        Probe::new()
    }
}

/// `IE_BYTES_PER_TOKEN` / `IE_STRIDE_BYTES`: after every generated token, read one byte every
/// `stride` bytes over the next `bytes` bytes of the mapped weights (wrapping), so a run can
/// model a larger model's memory traffic. Off unless `IE_BYTES_PER_TOKEN` is set.
pub struct MemPressure {
    pub bytes: usize,
    pub stride: usize,
    blob: &'static [u8],
    pos: usize,
}

impl MemPressure {
    pub fn from_env(blob: &'static [u8]) -> Result<Option<MemPressure>> {
        let var = |k: &str| -> Result<Option<usize>> {
            match std::env::var(k) {
                Err(_) => Ok(None),
                Ok(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| EngineError::Usage(format!("{k}={v:?} is not a byte count"))),
            }
        };
        let Some(bytes) = var("IE_BYTES_PER_TOKEN")?.filter(|b| *b > 0) else {
            return Ok(None);
        };
        let stride = var("IE_STRIDE_BYTES")?.unwrap_or(64);
        if stride == 0 || blob.is_empty() {
            return Err(EngineError::Usage(
                "IE_STRIDE_BYTES must be at least 1 (and the weights non-empty)".into(),
            ));
        }
        Ok(Some(MemPressure {
            bytes,
            stride,
            blob,
            pos: 0,
        }))
    }

    /// Touches `blob` from now on: the same weights, moved (ADR 31), so the pages given back
    /// are not faulted in again.
    pub fn follow(&mut self, blob: &'static [u8]) {
        debug_assert_eq!(blob.len(), self.blob.len());
        self.blob = blob;
    }

    /// Reads this token's share; returns a value the caller must not let the compiler drop.
    pub fn touch(&mut self) -> u64 {
        let mut sum = 0u64;
        let mut done = 0;
        while done < self.bytes {
            // SAFETY: `pos < blob.len()`; volatile so the reads are not elided.
            sum += unsafe { std::ptr::read_volatile(self.blob.as_ptr().add(self.pos)) } as u64;
            self.pos = (self.pos + self.stride) % self.blob.len();
            done += self.stride;
        }
        sum
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"bytes_per_token": self.bytes, "stride_bytes": self.stride})
    }
}

/// Median, min and max.
pub fn spread(v: &[f64]) -> serde_json::Value {
    let med = super::metrics::percentile(v, 50.0);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    serde_json::json!({"median": med, "min": min, "max": max})
}

/// The CPU's model name and the SIMD flags the kernels care about, from /proc/cpuinfo.
pub fn cpu() -> (String, Vec<String>) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let wanted = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
    ];
    let have = wanted
        .iter()
        .filter(|w| flags.split_whitespace().any(|f| f == **w))
        .map(|s| s.to_string())
        .collect();
    (
        field("model name").unwrap_or_else(|| "unknown CPU".into()),
        have,
    )
}

const BEGIN: &str = "<!-- clocher bench: rows written by `<bin> bench --merge`, one per machine, model, precision, ISA and threads -->";
const END: &str = "<!-- /clocher bench -->";
const HEADER: &str = "| date | machine | model | precision | isa | threads | pp tok/s (min-max) | tg tok/s (min-max) | p50 / p95 ms | peak RSS MB | read GB/s | tg x bytes/token vs bandwidth |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// Puts `row` (a markdown table row whose cells 2..=6 identify it) into the bench table of
/// `path`, replacing the row with the same identity; creates the file or table if missing.
/// Written atomically.
pub fn merge_row(path: &Path, row: &str) -> Result<()> {
    let err = |source| EngineError::Output {
        path: path.to_path_buf(),
        source,
    };
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Performance\n\nMeasured by the model binaries' `bench` subcommand.\n".to_string()
        }
        Err(e) => return Err(err(e)),
    };
    let key = |r: &str| -> Vec<String> {
        r.split('|')
            .skip(2)
            .take(5)
            .map(|c| c.trim().to_string())
            .collect()
    };
    let (before, table, after) = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => (
            old[..a].to_string(),
            old[a + BEGIN.len()..b].to_string(),
            old[b + END.len()..].to_string(),
        ),
        _ => (
            format!("{}\n\n", old.trim_end()),
            String::new(),
            "\n".into(),
        ),
    };
    let mut rows: Vec<String> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| date") && !l.starts_with("|---"))
        .filter(|l| key(l) != key(row))
        .map(str::to_string)
        .collect();
    rows.push(row.to_string());
    let text = format!(
        "{before}{BEGIN}\n{HEADER}\n{}\n{END}{after}",
        rows.join("\n")
    );
    super::write_atomic(path, text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    #[test]
    fn merge_replaces_same_identity_and_keeps_the_rest() {
        let dir = tempdir();
        let p = dir.join("PERF.md");
        std::fs::write(&p, "# Perf\n\nIntro text.\n").unwrap();
        let row = |m: &str, v: &str| {
            format!("| 2026 | cpu | {m} | int4w | avx2 | 2 | {v} | x | x | x | x | x |")
        };
        super::merge_row(&p, &row("a", "1")).unwrap();
        super::merge_row(&p, &row("b", "2")).unwrap();
        super::merge_row(&p, &row("a", "3")).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("# Perf\n\nIntro text.\n"), "{s}");
        assert!(!s.contains("| a | int4w | avx2 | 2 | 1 |"), "{s}");
        assert!(s.contains("| a | int4w | avx2 | 2 | 3 |"), "{s}");
        assert!(s.contains("| b | int4w | avx2 | 2 | 2 |"), "{s}");
        assert_eq!(s.matches("| date |").count(), 1, "{s}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("clocher-bench-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
