//! Checkpoint readers. Each turns its input into one [`Checkpoint`]: the config, every tensor
//! under its Hugging Face name (bytes still in the mapped file), and the tokenizer.

pub mod gguf;
pub mod hf;

use clocher_engine::format::{LlamaConfig, TokenizerInfo};
pub use clocher_engine::kernels::blocks::GgmlType;
use memmap2::Mmap;
use std::path::PathBuf;

/// A tensor as found in the source, already under its Hugging Face name and shape.
#[derive(Debug, Clone)]
pub struct SrcTensor {
    pub name: String,
    /// Outermost dimension first.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Which mapped file, and the byte range in it (validated against the file's length).
    pub file: usize,
    pub range: std::ops::Range<usize>,
    /// GGUF stores q/k rows permuted per head for its RoPE; undo with this many heads.
    pub unpermute_heads: Option<usize>,
}

pub struct Checkpoint {
    pub kind: &'static str,
    pub path: PathBuf,
    pub architecture: String,
    pub config: LlamaConfig,
    pub tensors: Vec<SrcTensor>,
    pub files: Vec<(PathBuf, Mmap)>,
    /// `tokenizer.json` contents (generated from GGUF metadata for GGUF files).
    pub tokenizer_json: String,
    pub tokenizer: TokenizerInfo,
}

impl Checkpoint {
    /// The tensor's values as f32, in Hugging Face row order.
    pub fn read_f32(&self, t: &SrcTensor) -> Vec<f32> {
        let (_, map) = &self.files[t.file];
        let bytes = &map[t.range.clone()];
        let numel: usize = t.shape.iter().product();
        let mut out = vec![0.0f32; numel];
        t.ty.dequant(bytes, &mut out);
        if let Some(heads) = t.unpermute_heads {
            out = unpermute_rows(&out, t.shape[0], heads);
        }
        out
    }

    /// The tensor's stored bytes (whole blocks), rows in Hugging Face order.
    pub fn read_raw(&self, t: &SrcTensor) -> Vec<u8> {
        let bytes = &self.files[t.file].1[t.range.clone()];
        match t.unpermute_heads {
            Some(heads) => unpermute_rows(bytes, t.shape[0], heads),
            None => bytes.to_vec(),
        }
    }

    pub fn find(&self, name: &str) -> Option<&SrcTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Undoes llama.cpp's converter permutation of q/k rows: within each head, GGUF interleaves
/// the two RoPE halves (row `2i + j`), while transformers keeps them apart (row `j * hd/2 + i`).
/// Works on values or on raw rows of blocks alike: a row is `w.len() / rows` items.
pub fn unpermute_rows<T: Copy + Default>(w: &[T], rows: usize, heads: usize) -> Vec<T> {
    let cols = w.len() / rows;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![T::default(); w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp's convert: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, hd, cols) = (2, 4, 3);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + j * (hd / 2) + i;
                    let dst = h * hd + 2 * i + j;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(super::unpermute_rows(&gguf, rows, heads), hf);
    }
}
