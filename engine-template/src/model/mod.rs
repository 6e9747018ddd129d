//! Model forward passes, built from [`crate::kernels`].

pub mod calib;
pub mod llama;

use crate::dtype::WeightType;
use crate::error::{EngineError, Result};
use crate::pool::{shard, Pool, SyncSlice};

/// A `[ROWS, COLS]` row-major weight matrix viewed in place in the weights blob; each row is
/// `COLS / W::BLOCK` stored elements (floats, or blocks of a GGUF format).
pub struct Mat<W: WeightType, const ROWS: usize, const COLS: usize> {
    pub data: &'static [W::Elem],
}

impl<W: WeightType, const ROWS: usize, const COLS: usize> Mat<W, ROWS, COLS> {
    /// Stored elements per row.
    const ROW_ELEMS: usize = {
        assert!(
            COLS.is_multiple_of(W::BLOCK),
            "a row must be a whole number of blocks"
        );
        COLS / W::BLOCK
    };

    /// Views the matrix at `offset` of `blob` (which must be aligned for `W::Elem`).
    pub fn bind(blob: &'static [u8], offset: usize, name: &str) -> Result<Self> {
        Ok(Mat {
            data: bind_slice::<W::Elem>(blob, offset, ROWS * Self::ROW_ELEMS, name)?,
        })
    }

    /// `y = W x`, rows sharded over the pool. Every bound is a constant after monomorphization.
    #[inline]
    pub fn gemv(&self, pool: &Pool, x: &[f32; COLS], y: &mut [f32; ROWS]) {
        let isa = crate::kernels::isa();
        // Rows are sharded in grains of 16 so no two threads share a cache line of `y`.
        pool.par_rows(y, 16, &|row, ys| {
            W::gemv(
                isa,
                &self.data[row * Self::ROW_ELEMS..(row + ys.len()) * Self::ROW_ELEMS],
                x,
                ys,
            );
        });
    }

    /// `y[i] = W x[i]` for `n` tokens (`x` is `[n, COLS]`, `y` is `[n, ROWS]`). One token runs
    /// the fused GEMV; more run as a GEMM that widens each weight row once into an f32 scratch
    /// row (L1-resident) and dots it with every token, so the weights cross the memory bus once
    /// per batch instead of once per token.
    pub fn matmul(&self, pool: &Pool, n: usize, x: &[f32], y: &mut [f32]) {
        if n == 1 {
            let x: &[f32; COLS] = x[..COLS].try_into().expect("one token's activations");
            let y: &mut [f32; ROWS] = (&mut y[..ROWS]).try_into().expect("one token's outputs");
            return self.gemv(pool, x, y);
        }
        let isa = crate::kernels::isa();
        let (x, ys) = (&x[..n * COLS], SyncSlice::new(&mut y[..n * ROWS]));
        pool.broadcast(&|t, nt| {
            let (a, b) = shard(ROWS, t, nt, 16);
            // One widened row on the stack: no allocation per call.
            let mut wrow = [0.0f32; COLS];
            for r in a..b {
                W::to_f32(self.row(r), &mut wrow);
                // SAFETY: element (i, r) belongs to the thread owning row r alone.
                let put = |i: usize, v: f32| unsafe { ys.range(i * ROWS + r, 1)[0] = v };
                let quads = x.chunks_exact(4 * COLS);
                let rest = quads.remainder();
                for (q, x4) in quads.enumerate() {
                    let xs = std::array::from_fn(|t| &x4[t * COLS..(t + 1) * COLS]);
                    for (t, v) in crate::kernels::dot4_f32(isa, &wrow, xs)
                        .into_iter()
                        .enumerate()
                    {
                        put(4 * q + t, v);
                    }
                }
                for (j, xi) in rest.chunks_exact(COLS).enumerate() {
                    put(n / 4 * 4 + j, crate::kernels::dot_f32(isa, &wrow, xi));
                }
            }
        });
    }

    pub fn row(&self, r: usize) -> &'static [W::Elem] {
        &self.data[r * Self::ROW_ELEMS..(r + 1) * Self::ROW_ELEMS]
    }
}

/// A 1-D f32 tensor of `N` elements in the blob (norm weights).
pub fn bind_vec<const N: usize>(
    blob: &'static [u8],
    offset: usize,
    name: &str,
) -> Result<&'static [f32; N]> {
    let s = bind_slice::<f32>(blob, offset, N, name)?;
    Ok(s.try_into().expect("bind_slice returned the asked length"))
}

fn bind_slice<T: bytemuck::Pod>(
    blob: &'static [u8],
    offset: usize,
    len: usize,
    name: &str,
) -> Result<&'static [T]> {
    let nbytes = len * std::mem::size_of::<T>();
    let bytes = offset
        .checked_add(nbytes)
        .and_then(|end| blob.get(offset..end))
        .ok_or_else(|| EngineError::Tensor {
            name: name.into(),
            msg: format!(
                "{nbytes} bytes at offset {offset} run past the {}-byte blob",
                blob.len()
            ),
        })?;
    bytemuck::try_cast_slice(bytes).map_err(|e| EngineError::Tensor {
        name: name.into(),
        msg: format!("offset {offset}: {e:?}"),
    })
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The last token's (`[VOCAB]`).
    Last,
    /// Those of tokens `k..` of the call (`[n - k, VOCAB]`), for perplexity.
    From(usize),
}

/// What the CLI needs from a model: load, a per-sequence state, and forward passes.
pub trait CausalLm: Sized + Send + Sync {
    type Offsets: 'static;
    type State;
    const VOCAB: usize;
    const CONTEXT: usize;
    fn load(
        blob: &'static [u8],
        offsets: &Self::Offsets,
        rms_norm_eps: f32,
        rope_theta: f32,
    ) -> Result<Self>;
    /// A fresh KV cache and scratch buffers for up to `ctx` positions.
    fn new_state(&self, ctx: usize) -> Self::State;
    /// Runs `tokens` at positions `pos..pos + tokens.len()` (in batches), and returns the
    /// logits `want` asks for.
    fn forward<'s>(
        &self,
        st: &'s mut Self::State,
        pool: &Pool,
        tokens: &[u32],
        pos: usize,
        want: Logits,
    ) -> Option<&'s [f32]>;
    /// Runs one token at position `pos` and, if `want_logits`, returns the next-token logits.
    fn step<'s>(
        &self,
        st: &'s mut Self::State,
        pool: &Pool,
        token: u32,
        pos: usize,
        want_logits: bool,
    ) -> Option<&'s [f32]> {
        let want = if want_logits {
            Logits::Last
        } else {
            Logits::None
        };
        self.forward(st, pool, &[token], pos, want)
    }
}
