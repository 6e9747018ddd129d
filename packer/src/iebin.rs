//! Writes IEBIN v1 (`model.ie.json`, `model.ie.bin`, `vocab.json`, `tokenizer.json`) atomically:
//! everything goes into a temporary sibling folder, which is renamed into place at the end.

use crate::error::{input, write_err, PackError, Result};
use crate::quant::TensorPlan;
use crate::source::Checkpoint;
use clocher_engine::format::{
    self, BlobInfo, Dtype, ModelMeta, Precision, SourceInfo, TensorEntry, TokenDigest,
};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A folder being written; removed on drop unless [`Staging::commit`] renamed it into place.
pub struct Staging {
    tmp: PathBuf,
    done: bool,
}

impl Staging {
    pub fn new(final_dir: &Path) -> Result<Staging> {
        let parent = final_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(write_err(parent))?;
        let base = final_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{base}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(write_err(&tmp))?;
        Ok(Staging { tmp, done: false })
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Replaces `final_dir` (if it exists and `is_ours` accepts it) with the staged folder.
    pub fn commit(mut self, final_dir: &Path, is_ours: impl Fn(&Path) -> bool) -> Result<()> {
        if final_dir.exists() {
            let empty = std::fs::read_dir(final_dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty && !is_ours(final_dir) {
                return Err(PackError::Usage(format!(
                    "writing {}: refusing to replace a folder clocher-pack did not write",
                    final_dir.display()
                )));
            }
            let old = self.tmp.with_extension("old");
            std::fs::rename(final_dir, &old).map_err(write_err(final_dir))?;
            std::fs::rename(&self.tmp, final_dir).map_err(write_err(final_dir))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, final_dir).map_err(write_err(final_dir))?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Checks the checkpoint's tensors against its config: nothing missing, nothing extra, every shape right.
pub fn check_tensors(ck: &Checkpoint) -> Result<()> {
    let expected = format::expected_tensors(&ck.config);
    let file_of = |t: &crate::source::SrcTensor| ck.files[t.file].0.clone();
    for (name, shape) in &expected {
        let Some(t) = ck.find(name) else {
            return Err(input(&ck.path, format!("missing tensor {name}")));
        };
        if &t.shape != shape {
            return Err(input(
                file_of(t),
                format!(
                    "tensor {name} has shape {:?}, the config implies {:?}",
                    t.shape, shape
                ),
            ));
        }
    }
    if let Some(t) = ck
        .tensors
        .iter()
        .find(|t| !expected.iter().any(|(n, _)| n == &t.name))
    {
        return Err(input(
            file_of(t),
            format!("unexpected tensor {} for this config", t.name),
        ));
    }
    Ok(())
}

/// The precision used when `--precision` is absent: the source's float type when all linear
/// layers share one, the stored formats for a GGUF file with block formats, else fp32.
pub fn default_precision(ck: &Checkpoint) -> Precision {
    use crate::source::GgmlType as S;
    let mut types = ck
        .tensors
        .iter()
        .filter(|t| !format::is_norm(&t.name))
        .map(|t| t.ty);
    match types.next() {
        Some(first) if types.all(|t| t == first) => match first {
            S::BF16 => Precision::Bf16,
            S::F16 => Precision::Fp16,
            S::F32 => Precision::Fp32,
            _ => Precision::Gguf,
        },
        _ if ck.kind == "gguf" => Precision::Gguf,
        _ => Precision::Fp32,
    }
}

/// Bytes [`BlockWriter`] writes at a time: one x86-64 huge page.
const BLOCK: usize = 2 << 20;

/// Writes a file in whole [`BLOCK`]s at offsets that are multiples of it (the last one may be
/// short). Linux (6.16 and later on ext4) then keeps each block in the page cache as one
/// 2 MiB folio, which every later mmap of the blob maps with one page-table entry: faulting
/// the 540 MB of SmolLM2's fp32 weights in takes 0.4 ms instead of 20 ms (ADR 39). Writes of
/// other sizes, as a `BufWriter` makes, leave folios of a few pages.
struct BlockWriter<W: Write> {
    file: W,
    buf: Vec<u8>,
}

impl<W: Write> BlockWriter<W> {
    fn new(file: W) -> Self {
        BlockWriter {
            file,
            buf: Vec::with_capacity(BLOCK),
        }
    }

    /// Writes what is left and gives the file back.
    fn finish(mut self) -> std::io::Result<W> {
        self.file.write_all(&self.buf)?;
        Ok(self.file)
    }
}

impl<W: Write> Write for BlockWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = (BLOCK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOCK {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }

    /// Writes nothing: a short write here would break the blocks' alignment.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the IEBIN files for `ck` into `dir` (a staging folder) and returns the metadata.
/// `plan` ([`crate::quant::plan`]) gives every tensor's dtype.
pub fn write(
    ck: &Checkpoint,
    dir: &Path,
    name: &str,
    precision: Precision,
    plan: &HashMap<String, TensorPlan>,
) -> Result<ModelMeta> {
    check_tensors(ck)?;
    let expected = format::expected_tensors(&ck.config);
    let mut total = 0u64;
    for (n, s) in &expected {
        let d = plan[n].dtype(s[s.len() - 1]);
        let bytes = d
            .nbytes(s)
            .map_err(|e| input(&ck.path, format!("tensor {n}: {e}")))?;
        total += bytes as u64;
    }
    let bar = indicatif::ProgressBar::new(total).with_message(format!("packing {name}"));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );

    let blob_path = dir.join(format::BLOB_FILE);
    let f = std::fs::File::create(&blob_path).map_err(write_err(&blob_path))?;
    let mut w = BlockWriter::new(f);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut pos = 0u64;
    let mut entries = Vec::with_capacity(expected.len());
    let mut layouts = std::collections::BTreeMap::new();
    let mut put = |bytes: &[u8], pos: &mut u64| -> Result<()> {
        w.write_all(bytes).map_err(write_err(&blob_path))?;
        hasher.update(bytes);
        *pos += bytes.len() as u64;
        Ok(())
    };
    for (tname, shape) in &expected {
        let t = ck.find(tname).expect("checked above");
        let cols = shape[shape.len() - 1];
        let tplan = plan[tname];
        let dtype = tplan.dtype(cols);
        let pad = pos.next_multiple_of(format::ALIGN) - pos;
        put(&vec![0u8; pad as usize], &mut pos)?;
        let bytes: Vec<u8> = if dtype == Dtype::Ggml(t.ty) {
            ck.read_raw(t)
        } else if dtype == Dtype::Rows(t.ty) || dtype == Dtype::RowsLanes(t.ty) {
            crate::quant::split(dtype, t.ty, cols, &ck.read_raw(t))
        } else {
            crate::quant::encode(tplan, &ck.read_f32(t), cols)
                .map_err(|e| input(&ck.path, format!("converting tensor {tname}: {e}")))?
        };
        if let Some(doc) = format::layout_doc(dtype) {
            layouts.insert(dtype.name(), doc);
        }
        entries.push(TensorEntry {
            name: tname.clone(),
            shape: shape.clone(),
            dtype,
            offset: pos,
            nbytes: bytes.len() as u64,
            layout: "row_major".into(),
            quant: match tplan {
                TensorPlan::Quant(q) => Some(q),
                TensorPlan::Plain(_) => None,
            },
        });
        put(&bytes, &mut pos)?;
        bar.inc(bytes.len() as u64);
    }
    w.finish()
        .and_then(|f| f.sync_all())
        .map_err(write_err(&blob_path))?;
    bar.finish_and_clear();

    let mut dtypes: Vec<String> = ck.tensors.iter().map(|t| t.ty.name().to_string()).collect();
    dtypes.sort();
    dtypes.dedup();
    let meta = ModelMeta {
        format: format::FORMAT.into(),
        version: format::VERSION,
        name: name.into(),
        architecture: ck.architecture.clone(),
        precision,
        config: ck.config.clone(),
        tensors: entries,
        tokenizer: ck.tokenizer.clone(),
        source: SourceInfo {
            kind: ck.kind.into(),
            path: ck.path.display().to_string(),
            dtypes,
        },
        blob: BlobInfo {
            file: format::BLOB_FILE.into(),
            size: pos,
            xxh3: format!("{:016x}", hasher.digest()),
        },
        layouts,
    };
    write_file(
        &dir.join(format::META_FILE),
        serde_json::to_string_pretty(&meta)
            .expect("serializable")
            .as_bytes(),
    )?;
    write_file(
        &dir.join(format::TOKENIZER_FILE),
        ck.tokenizer_json.as_bytes(),
    )?;

    // The tokenizer's digest for a fast load (empty where it has none).
    write_file(
        &dir.join(format::TOKENIZER_DIGEST_FILE),
        &TokenDigest::encode(&ck.tokenizer_json).unwrap_or_default(),
    )?;

    // vocab.json: id -> token string.
    let tok = tokenizers::Tokenizer::from_bytes(ck.tokenizer_json.as_bytes())
        .map_err(|e| input(&ck.path, format!("unreadable tokenizer: {e}")))?;
    let n = tok.get_vocab_size(true).max(ck.config.vocab_size);
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n as u32)
        .filter_map(|i| tok.id_to_token(i).map(|t| (i.to_string(), t.into())))
        .collect();
    write_file(
        &dir.join(format::VOCAB_FILE),
        serde_json::to_string(&vocab)
            .expect("serializable")
            .as_bytes(),
    )?;
    Ok(meta)
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(write_err(path))
}

#[cfg(test)]
mod tests {
    use super::{BlockWriter, BLOCK};
    use std::io::Write;

    /// A writer that keeps what it is given and the size of each call.
    #[derive(Default)]
    struct Calls {
        bytes: Vec<u8>,
        sizes: Vec<usize>,
    }

    impl Write for Calls {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.bytes.extend_from_slice(data);
            self.sizes.push(data.len());
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Whatever the sizes of the writes into it, a `BlockWriter` passes the bytes on in
    /// order, in whole blocks but for a short last one.
    #[test]
    fn block_writer_writes_whole_blocks() {
        let sizes = [
            0,
            1,
            BLOCK - 1,
            7,
            BLOCK,
            3 * BLOCK + 5,
            64,
            0,
            BLOCK / 2 + 1,
        ];
        let mut want = vec![];
        let mut w = BlockWriter::new(Calls::default());
        for (i, &n) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..n).map(|j| (i * 31 + j * 7) as u8).collect();
            w.write_all(&chunk).unwrap();
            w.flush().unwrap();
            want.extend_from_slice(&chunk);
        }
        let out = w.finish().unwrap();
        assert!(out.bytes == want, "the bytes differ from those written");
        let (last, whole) = out.sizes.split_last().unwrap();
        assert!(whole.iter().all(|&n| n == BLOCK), "sizes {:?}", out.sizes);
        assert_eq!(*last, want.len() % BLOCK, "the short last block");
    }
}
