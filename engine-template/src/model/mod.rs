//! Model forward passes, built from [`crate::kernels`].

pub mod calib;
pub mod llama;

use crate::dtype::WeightType;
use crate::error::{EngineError, Result};
use crate::kernels::act8::ActQ8;
use crate::kernels::{Isa, Widen};
use crate::pool::{shard, Pool, SyncSlice};

/// Rows a thread's share of a GEMV is rounded to (16 f32 outputs: a whole cache line).
pub const GEMV_GRAIN: usize = 16;

/// Tokens the 8-bit path of [`Mat::matmul`] hands a kernel at once.
const Q8_TILE: usize = 8;

/// One token's activations as a decode GEMV takes them: f32, and their 8-bit quantization
/// where some weight type of the op runs the 8-bit path ([`crate::kernels::act8()`]).
#[derive(Clone, Copy)]
pub struct Acts<'a> {
    pub x: &'a [f32],
    pub q: Option<&'a ActQ8>,
}

impl<'a> Acts<'a> {
    /// `x` as it is.
    pub fn f32(x: &'a [f32]) -> Acts<'a> {
        Acts { x, q: None }
    }

    /// `x`, quantized once into `buf` when `want_q8` (a weight type of the op has
    /// [`WeightType::gemv_q8`]) and the process runs the 8-bit path, its lanes filled too where
    /// `lanes` (a weight type of the op has [`WeightType::LANES`]).
    pub fn new(
        isa: Isa,
        x: &'a [f32],
        (want_q8, lanes): (bool, bool),
        buf: &'a mut ActQ8,
    ) -> Acts<'a> {
        Self::quantized_if(isa, x, want_q8 && crate::kernels::act8(), lanes, buf)
    }

    /// As [`Acts::new`] for the output head, which follows [`crate::kernels::act8_head()`].
    pub fn head(
        isa: Isa,
        x: &'a [f32],
        (want_q8, lanes): (bool, bool),
        buf: &'a mut ActQ8,
    ) -> Acts<'a> {
        Self::quantized_if(isa, x, want_q8 && crate::kernels::act8_head(), lanes, buf)
    }

    fn quantized_if(isa: Isa, x: &'a [f32], on: bool, lanes: bool, buf: &'a mut ActQ8) -> Acts<'a> {
        let q = on.then(|| {
            buf.quantize(isa, x);
            if lanes {
                buf.fill_lanes();
            }
            &*buf
        });
        Acts { x, q }
    }
}

/// Zeroed elements (the KV cache's f32 or f16) mapped straight from the OS in 4 KiB pages: a
/// page costs nothing until a position in it is written, whatever the allocator does.
/// Allocators may back big blocks with 2 MiB pages (mimalloc does, ADR 21), and then a 14-token
/// prompt zeroed two of them per layer for K and V, 120 MB, most of its prefill.
pub struct Zeroed<T> {
    map: memmap2::MmapMut,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Zeroed<T> {
    pub fn new(len: usize) -> Zeroed<T> {
        let bytes = len * std::mem::size_of::<T>();
        // An empty map is an error on some systems: map a byte and never show it.
        let map = memmap2::MmapMut::map_anon(bytes.max(1))
            .unwrap_or_else(|e| panic!("mapping {bytes} bytes of KV cache: {e}"));
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::NoHugePage);
        Zeroed {
            map,
            len,
            _elem: std::marker::PhantomData,
        }
    }
}

impl<T> Zeroed<T> {
    /// The elements' bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[..self.len * std::mem::size_of::<T>()]
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for Zeroed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // The map is page-aligned and holds at least `len` elements.
        bytemuck::cast_slice(self.bytes())
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(&mut self.map[..self.len * std::mem::size_of::<T>()])
    }
}

static KV_F16: crate::kernels::Switch = crate::kernels::Switch::new("IE_KV_TYPE", "f16", "f32");

/// Whether the KV cache holds f16 (ADR 36): `IE_KV_TYPE=f16` / `IE_KV_TYPE=f32` force it;
/// otherwise the binary's precision decides ([`init_kv_f16`]; f32 when nothing called it).
/// Fixed once per process; generated binaries report it as `kv_cache` in their JSON line.
pub fn kv_f16() -> bool {
    KV_F16.get(|| false)
}

/// Fixes [`kv_f16()`] for this process with `default` where `IE_KV_TYPE` is unset; returns it.
/// The generated binaries call it before their first forward pass: the quantized precisions
/// keep f16, as llama.cpp does; fp32 and bf16 keep f32, since fp32's promise is transformers'
/// logits to 2e-3. A later call changes nothing.
pub fn init_kv_f16(default: bool) -> bool {
    KV_F16.get(|| default)
}

#[cfg(test)]
mod tests {
    use super::Zeroed;

    #[test]
    fn zeroed_starts_zeroed_holds_writes_and_may_be_empty() {
        assert!(Zeroed::<f32>::new(0).is_empty());
        let mut z = Zeroed::<f32>::new(3000);
        assert_eq!(z.len(), 3000);
        assert!(z.iter().all(|&v| v == 0.0));
        z[2999] = 1.5;
        z[0] = -2.0;
        assert_eq!((z[0], z[1], z[2999]), (-2.0, 0.0, 1.5));
        let mut h = Zeroed::<half::f16>::new(5);
        assert!(h.iter().all(|v| v.to_f32() == 0.0));
        h[4] = half::f16::from_f32(0.5);
        assert_eq!(h[4].to_f32(), 0.5);
    }
}

/// The 8-bit quantization of `n` tokens' activations (`x` is `[n, cols]`), one [`ActQ8`] a
/// token in `bufs`, where some weight type of the op runs the 8-bit path (`want_q8`) and the
/// process does ([`crate::kernels::act8()`]); `None` otherwise. Their lanes are filled where
/// `lanes` ([`WeightType::LANES`]).
pub fn quantize_rows<'a>(
    isa: Isa,
    x: &[f32],
    cols: usize,
    (want_q8, lanes): (bool, bool),
    bufs: &'a mut Vec<ActQ8>,
) -> Option<&'a [ActQ8]> {
    if !(want_q8 && crate::kernels::act8()) {
        return None;
    }
    let n = x.len() / cols;
    if bufs.len() < n {
        bufs.resize_with(n, ActQ8::default);
    }
    for (b, xi) in bufs.iter_mut().zip(x.chunks_exact(cols)) {
        b.quantize(isa, xi);
        if lanes {
            b.fill_lanes();
        }
    }
    Some(&bufs[..n])
}

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

    /// Thread `t` of `nt`'s share of `y = W x`: its rows, in grains of [`GEMV_GRAIN`] so no
    /// two threads share a cache line of `y`. Several matrices' shares can run in one pool
    /// dispatch (decode runs q, k and v together). Every bound is a constant after
    /// monomorphization.
    #[inline]
    pub fn gemv_part(&self, isa: Isa, a: Acts<'_>, t: usize, nt: usize, y: &SyncSlice<'_>) {
        let (r0, r1) = shard(ROWS, t, nt, GEMV_GRAIN);
        if r0 == r1 {
            return;
        }
        // SAFETY: `shard` gives every thread rows of its own.
        let ys = unsafe { y.range(r0, r1 - r0) };
        let w = &self.data[r0 * Self::ROW_ELEMS..r1 * Self::ROW_ELEMS];
        match a.q {
            Some(q) if W::ACT8 => W::gemv_q8(isa, w, q, ys),
            _ => W::gemv(isa, w, &a.x[..COLS], ys),
        }
    }

    /// `y = W x` (`y` is `[ROWS]`), rows sharded over the pool.
    pub fn gemv(&self, pool: &Pool, a: Acts<'_>, y: &mut [f32]) {
        let isa = crate::kernels::isa();
        let ys = SyncSlice::new(&mut y[..ROWS]);
        pool.broadcast(&|t, nt| self.gemv_part(isa, a, t, nt, &ys));
    }

    /// Rows of the 8-bit path of [`Mat::matmul`] that one thread runs every token through
    /// before moving on: about 16 KiB of weights, so they stay in L1 while the tokens pass,
    /// between 16 and 64 rows (the output scratch holds 64 rows of [`Q8_TILE`] tokens).
    const Q8_CHUNK: usize = {
        let r = 16384 / (Self::ROW_ELEMS * std::mem::size_of::<W::Elem>());
        if r < GEMV_GRAIN {
            GEMV_GRAIN
        } else if r > 4 * GEMV_GRAIN {
            4 * GEMV_GRAIN
        } else {
            r
        }
    };

    /// `y[i] = W x[i]` for `n` tokens (`x` is `[n, COLS]`, `y` is `[n, ROWS]`; `q`, where the
    /// process runs the 8-bit path, is each token's quantized activations). One token runs the
    /// fused GEMV.
    ///
    /// More run as a GEMM, the weights crossing the memory bus once per batch. Where the type
    /// has a batched 8-bit kernel ([`WeightType::GEMM_Q8`]) and `q` is given, each thread takes
    /// its rows [`Self::Q8_CHUNK`] at a time (L1-resident) and hands them to the kernel with
    /// [`Q8_TILE`] tokens at a time (ADR 18). Otherwise each thread takes four of its weight
    /// rows at a time: float rows (f32, bf16, f16) are read in place and widened in registers
    /// by the tiles ([`WeightType::tile_row`]; bf16's first token 1 ms sooner than from a
    /// widened copy), other types are widened into f32 scratch on its stack first
    /// (L1/L2-resident); then 4-row by 3-token tiles run over every token ([`tiles`]), so each
    /// token's activations are read once per four rows. 4 x 3 over 4 x 2: int8w's prefill
    /// +25%, fp32's +3% (paired A/B, 14-token prompt, two threads).
    pub fn matmul(&self, pool: &Pool, n: usize, x: &[f32], q: Option<&[ActQ8]>, y: &mut [f32]) {
        if n == 1 {
            let a = Acts {
                x: &x[..COLS],
                q: q.filter(|_| W::ACT8).map(|q| &q[0]),
            };
            return self.gemv(pool, a, y);
        }
        let q = q.filter(|_| W::GEMM_Q8);
        let isa = crate::kernels::isa();
        let (x, ys) = (&x[..n * COLS], SyncSlice::new(&mut y[..n * ROWS]));
        if let Some(q) = q {
            return pool.broadcast(&|t, nt| {
                let (a, b) = shard(ROWS, t, nt, GEMV_GRAIN);
                let mut buf = [0.0f32; Q8_TILE * GEMV_GRAIN * 4];
                for r0 in (a..b).step_by(Self::Q8_CHUNK) {
                    let r1 = (r0 + Self::Q8_CHUNK).min(b);
                    let w = &self.data[r0 * Self::ROW_ELEMS..r1 * Self::ROW_ELEMS];
                    for i0 in (0..n).step_by(Q8_TILE) {
                        let (m, len) = ((n - i0).min(Q8_TILE), r1 - r0);
                        W::gemm_q8(isa, w, &q[i0..i0 + m], &mut buf[..m * len]);
                        for (i, out) in buf[..m * len].chunks_exact(len).enumerate() {
                            // SAFETY: rows a..b of every token belong to this thread alone.
                            unsafe { ys.range((i0 + i) * ROWS + r0, len) }.copy_from_slice(out);
                        }
                    }
                }
            });
        }
        pool.broadcast(&|t, nt| {
            let (a, b) = shard(ROWS, t, nt, GEMV_GRAIN);
            let mut wbuf = [[0.0f32; COLS]; 4];
            let tok = |i: usize| &x[i * COLS..(i + 1) * COLS];
            for r0 in (a..b).step_by(4) {
                let rows = (b - r0).min(4);
                // SAFETY: element (i, r) belongs to the thread owning row r alone.
                let put =
                    |i: usize, r: usize, v: f32| unsafe { ys.range(i * ROWS + r0 + r, 1)[0] = v };
                // The next four rows, fetched from memory while these run from L1/L2.
                let next = &self.data
                    [(r0 + 4).min(b) * Self::ROW_ELEMS..(r0 + 8).min(b) * Self::ROW_ELEMS];
                if let Some(w0) = (rows == 4).then(|| W::tile_row(self.row(r0))).flatten() {
                    let row = |k: usize| W::tile_row(self.row(r0 + k)).expect("every row tiles");
                    tiles(isa, [w0, row(1), row(2), row(3)], n, tok, next, put);
                    continue;
                }
                for (i, w) in wbuf.iter_mut().enumerate().take(rows) {
                    W::to_f32(self.row(r0 + i), w);
                }
                if rows == 4 {
                    let ws = [&wbuf[0][..], &wbuf[1], &wbuf[2], &wbuf[3]];
                    tiles(isa, ws, n, tok, next, put);
                    continue;
                }
                for i in 0..n {
                    for (r, w) in wbuf.iter().enumerate().take(rows) {
                        put(i, r, crate::kernels::dot_f32(isa, w, tok(i)));
                    }
                }
            }
        });
    }

    pub fn row(&self, r: usize) -> &'static [W::Elem] {
        &self.data[r * Self::ROW_ELEMS..(r + 1) * Self::ROW_ELEMS]
    }
}

/// Four weight rows `ws` against the `n` tokens `tok(i)` of a batched GEMM, in 4-row by 3-token
/// tiles (a pair left runs 4 x 2), so each token's activations are read once per four rows;
/// `put(i, r, v)` takes token `i`'s dot with row `r`. The rows run from L1/L2 (widened copies,
/// or rows read in place and widened in registers): meanwhile `next` is fetched from memory, a
/// slice per tile. All at once (36+ lines) was no faster; spread over the tiles, fp32's prefill
/// gained 17%.
fn tiles<'x, E: Widen>(
    isa: Isa,
    ws: [&[E]; 4],
    n: usize,
    tok: impl Fn(usize) -> &'x [f32],
    next: &[impl Sized],
    mut put: impl FnMut(usize, usize, f32),
) {
    let per = next.len().div_ceil((n / 3).max(1)).max(1);
    let mut chunks = next.chunks(per);
    let mut i = 0;
    // Tiles of `$t` tokens (tokens `i + $j`) while `$end` are left.
    macro_rules! run {
        ($t:literal, $end:expr, $dot:path, [$($j:literal),*]) => {
            while i + $t <= $end {
                if let Some(c) = chunks.next() {
                    crate::kernels::prefetch(c);
                }
                let out = $dot(isa, ws, [$(tok(i + $j)),*]);
                for (r, row) in out.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        put(i + j, r, v);
                    }
                }
                i += $t;
            }
        };
    }
    // One token runs the GEMV ([`Mat::matmul`]), so the tiles below cover every token.
    debug_assert!(n != 1, "tiles: one token");
    // A token left over by the 4 x 3 tiles would run alone, its dot product at two loads an
    // FMA: two 4 x 2 tiles take the last four instead (16 tokens: 4 x 3 + 2 x 2, not 5 x 3 + 1:
    // fp32's first token 1.7 ms sooner, bf16's 2).
    let by3 = if n % 3 == 1 { n - 4 } else { n };
    run!(3, by3, crate::kernels::dot4x3, [0, 1, 2]);
    run!(2, n, crate::kernels::dot4x2, [0, 1]);
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
    type Offsets: 'static + Sync;
    type State;
    const VOCAB: usize;
    const CONTEXT: usize;
    /// Whether some weight of the blocks has a batched 8-bit kernel
    /// ([`WeightType::GEMM_Q8`]): prefill then runs it where the process takes the 8-bit path.
    const GEMM_Q8: bool;
    /// Whether the output head's weight type has an 8-bit activation GEMV.
    const HEAD_ACT8: bool;
    /// Whether the output head's weight type has a batched 8-bit kernel (batches of positions
    /// that all want logits, as in `perplexity`, take it on the 8-bit path).
    const HEAD_GEMM_Q8: bool;
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
