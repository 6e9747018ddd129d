//! Kernels: one safe scalar `*_ref` version per op and weight type (the oracle in tests and the
//! fallback on CPUs without AVX2), and `*_avx2` versions with the same signatures.
//! The ISA is detected once per process ([`isa`]); a SIMD body is only entered after that check,
//! so a binary never executes an instruction its CPU lacks.

pub mod act8;
pub mod blocks;
pub mod int;
pub mod quant;
pub mod reference;
pub mod rows;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use half::{bf16, f16};
use std::sync::OnceLock;

/// Instruction set family a kernel call runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F + BW on top of AVX2. Kernels without a 512-bit body run their AVX2 one.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best ISA this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
        Isa::Scalar
    }

    /// Every ISA usable here, scalar first (for tests that compare each against the reference).
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Scalar => vec![Isa::Scalar],
            Isa::Avx2 => vec![Isa::Scalar, Isa::Avx2],
            Isa::Avx512 => vec![Isa::Scalar, Isa::Avx2, Isa::Avx512],
        }
    }
}

/// The ISA for this process, detected once: AVX2 where the CPU has it, even with AVX-512, since
/// no 512-bit body has paid yet (on the Xeon of this project's machines the int4 GEMV decoded
/// SmolLM2 at 54 tok/s with AVX-512 against 71 with AVX2, int8 at 75 against 81; see ADR 14).
/// `IE_ISA=avx512` opts in to the 512-bit bodies, `IE_ISA=scalar` forces the reference kernels.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = Isa::detect();
        match std::env::var("IE_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx512") => best,
            _ => best.min(Isa::Avx2),
        }
    })
}

static ACT8: Switch = Switch::new("IE_ACT8", "1", "0");

/// Whether decode GEMVs over the formats that have one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
/// Q6_K, int8, int4) quantize a token's activations to 8 bits and run integer dots ([`act8`]),
/// as llama.cpp does for its quantized types. `IE_ACT8=1` / `IE_ACT8=0` force it on or off (on
/// with `IE_ISA=scalar` it runs the reference kernels); otherwise the binary's precision decides
/// ([`init_act8`]; on when nothing called it), and only where the process runs SIMD kernels. Fixed once per process; generated binaries report
/// it as `activations` in their JSON line. The perplexity it costs is in `docs/PRECISIONS.md`
/// (ADR 16).
pub fn act8() -> bool {
    ACT8.get(|| isa() != Isa::Scalar)
}

static ACT8_HEAD: Switch = Switch::new("IE_ACT8", "1", "0");

/// Whether the output head's decode GEMV takes 8-bit activations: as [`act8()`] under
/// `IE_ACT8=1` / `IE_ACT8=0`, and on by default for every precision where the process runs SIMD
/// kernels, int8w included. The head's rounding costs nothing measurable there (int8w's
/// perplexity on gpl-3 moved by 0.01%), while its Q8_0 GEMV runs a third faster (ADR 20).
pub fn act8_head() -> bool {
    ACT8_HEAD.get(|| isa() != Isa::Scalar)
}

/// Fixes [`act8()`] for this process with `default` where `IE_ACT8` is unset; returns it. The
/// generated binaries call it before their first forward pass: int8w keeps f32 activations by
/// default (its +0.5% perplexity gate does not hold on 8-bit activations), the other quantized
/// precisions take them. A later call changes nothing.
pub fn init_act8(default: bool) -> bool {
    // Forced on, it runs on any ISA: the scalar `*_ref` kernels are its oracle.
    ACT8.get(|| default && isa() != Isa::Scalar)
}

/// A process-wide choice, fixed on first use: the environment variable `var` set to `on` or
/// `off` forces it; otherwise the default that first use gives decides.
pub struct Switch {
    cell: OnceLock<bool>,
    var: &'static str,
    on: &'static str,
    off: &'static str,
}

impl Switch {
    pub const fn new(var: &'static str, on: &'static str, off: &'static str) -> Switch {
        Switch {
            cell: OnceLock::new(),
            var,
            on,
            off,
        }
    }

    /// The choice, fixed now with `default()` unless the environment sets it or it is fixed
    /// (then `default` is not called: the hot paths ask on every op).
    pub fn get(&self, default: impl FnOnce() -> bool) -> bool {
        *self.cell.get_or_init(|| match std::env::var(self.var) {
            Ok(v) if v == self.on => true,
            Ok(v) if v == self.off => false,
            _ => default(),
        })
    }
}

/// Tolerances of the kernel tests, in one place. SIMD and scalar kernels sum in different
/// orders, so they agree to a relative error that grows with the length.
pub mod tol {
    /// Relative error of a float dot product against an f64 dot, per sqrt(len).
    pub const DOT_REL: f32 = 2e-6;
    /// Absolute floor for dot products near zero.
    pub const DOT_ABS: f32 = 1e-5;
    /// Block-format GEMV against an f64 dot of the exactly dequantized weights, per sqrt(len):
    /// the fused kernels factor the block scale out of the sum, so they round a little
    /// differently from a plain float dot.
    pub const QUANT_DOT_REL: f32 = 8e-6;
    /// Elementwise ops (norms, softmax, rope, silu): max relative error.
    pub const ELEMENTWISE_REL: f32 = 1e-5;
}

macro_rules! dispatch_gemv {
    ($name:ident, $elem:ty, $ref_fn:ident, $avx2_fn:ident) => {
        #[inline]
        pub fn $name(isa: Isa, w: &[$elem], x: &[f32], y: &mut [f32]) {
            debug_assert_eq!(w.len(), x.len() * y.len());
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime
                // feature detection, and both imply AVX2.
                Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::$avx2_fn(w, x, y) },
                _ => reference::$ref_fn(w, x, y),
            }
        }
    };
}
dispatch_gemv!(gemv_f32, f32, gemv_f32_ref, gemv_f32_avx2);
dispatch_gemv!(gemv_bf16, bf16, gemv_bf16_ref, gemv_bf16_avx2);
dispatch_gemv!(gemv_f16, f16, gemv_f16_ref, gemv_f16_avx2);

macro_rules! dispatch_widen {
    ($name:ident, $elem:ty, $ref_fn:ident, $avx2_fn:ident) => {
        /// Widens weights to f32 on the process's ISA (the batched GEMM's row scratch).
        #[inline]
        pub fn $name(isa: Isa, w: &[$elem], out: &mut [f32]) {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime
                // feature detection, and both imply AVX2 and F16C.
                Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::$avx2_fn(w, out) },
                _ => reference::$ref_fn(w, out),
            }
        }
    };
}
dispatch_widen!(widen_bf16, bf16, widen_bf16_ref, widen_bf16_avx2);
dispatch_widen!(widen_f16, f16, widen_f16_ref, widen_f16_avx2);

/// Asks for every cache line of `s` to be brought into L2, without waiting; a no-op off
/// x86-64. Only a hint: it never faults, whatever the addresses. For data read again soon;
/// weights streamed once per token use [`prefetch_stream_span`].
#[inline(always)]
pub fn prefetch<T>(s: &[T]) {
    let start = s.as_ptr() as *const u8;
    prefetch_span(start, start.wrapping_add(std::mem::size_of_val(s)));
}

/// Asks for every cache line from `start` up to `end` to be brought into L2, without waiting
/// ([`prefetch`] over a span given by its ends).
#[inline(always)]
pub fn prefetch_span(start: *const u8, end: *const u8) {
    prefetch_lines::<HINT_T1>(start, end)
}

/// [`prefetch_span`] for weights a decode GEMV reads once per token: non-temporal. On AMD Zen
/// (measured on Zen 3) a non-temporal prefetch that misses L2 fills L1 alone, and the line is
/// dropped from there, not evicted into L2 and from L2 into the L3 victim cache; so the tens of
/// megabytes a token streams no longer flush the key-value cache, the activations and
/// everything else out of both, nor cost victim traffic. Against the L2 hint, paired A/B on
/// this host: int4w decode 1.08x to 1.24x (two runs), Q4_K_M 1.17x, Q4_1 and Q8_0 1.11x, int8w
/// 0.96x to 1.07x (ADR 46).
#[inline(always)]
pub fn prefetch_stream_span(start: *const u8, end: *const u8) {
    prefetch_lines::<HINT_NTA>(start, end)
}

/// `_MM_HINT_T1` and `_MM_HINT_NTA` (their values, so the names exist off x86-64 too).
const HINT_T1: i32 = 2;
const HINT_NTA: i32 = 0;

/// Every cache line from `start` up to `end`, prefetched with hint `HINT`; a no-op off x86-64.
#[inline(always)]
fn prefetch_lines<const HINT: i32>(start: *const u8, end: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut line = start as usize & !63;
        while line < end as usize {
            // SAFETY: SSE is part of x86-64, and a prefetch is a hint that never faults.
            unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, end);
}

#[cfg(target_arch = "x86_64")]
const _: () = assert!(
    HINT_T1 == std::arch::x86_64::_MM_HINT_T1 && HINT_NTA == std::arch::x86_64::_MM_HINT_NTA
);

/// How many rows ahead of the one it reads a decode GEMV asks for rows of up to
/// [`WHOLE_ROW_BYTES`] ([`Ahead`]). The hardware
/// prefetchers alone left the GEMVs waiting on memory, each thread streaming its own range of
/// short rows: with this, decode ran 6-7% faster for int4w and Q4_1, 20% for int8w and Q8_0, 3%
/// for Q4_K_M (A/B, same host). 4 to 12 rows measured alike, and 16 no faster with the
/// non-temporal hint ([`prefetch_stream_span`], ADR 46).
pub const PREFETCH_ROWS: usize = 8;

/// Rows up to this long are asked for whole, [`PREFETCH_ROWS`] ahead; longer ones part by
/// part, [`PREFETCH_BYTES`] ahead ([`Ahead`]).
pub const WHOLE_ROW_BYTES: usize = 768;

/// How far ahead of the part it reads a decode GEMV asks for a long row's parts ([`Ahead`]):
/// on rows of 1536 weights, 3-4 KiB streamed Q8_0 at 94-96% of a thread's read bandwidth, 1-2
/// KiB and eight rows ahead (13 KiB) at 90-93% (ADR 47).
pub const PREFETCH_BYTES: usize = 4096;

/// How a decode GEMV asks for the weights ahead of those it reads ([`PREFETCH_ROWS`] rows for
/// short rows, [`PREFETCH_BYTES`] for long ones), non-temporally ([`prefetch_stream_span`]).
/// Each row of a matrix, `bytes` bytes, is cut in `n` equal parts (groups, blocks, or the
/// float GEMVs' 32-weight steps), the last whole part also taking what the parts leave over,
/// and the kernel calls [`Ahead::part`] for each part as it reads it. A row of up to
/// [`WHOLE_ROW_BYTES`] is asked for at once, with its first part; a longer row a part at a
/// time, only the lines that start in the part, so that consecutive parts don't ask twice.
/// Rows of fewer parts than a call's `len` are left to the hardware prefetcher. The rows of a
/// matrix lie back to back; past the matrix's end, the lines asked for are whatever lies there,
/// which a prefetch may ask for (it never faults).
///
/// Why both, measured on one thread streaming 128 MiB (`examples/stream.rs`, ADR 47): asked
/// for whole, rows of 1536 weights (868 to 1632 bytes) streamed at 70-89% of the thread's read
/// bandwidth (Q8_0 69-71%, Q5_1 72-74%, Q4_1 83-86%, int4 87-93%), and part by part at
/// 90-107%; rows of 576 (328 to 612 bytes) the other way round, whole at 81-104% and part by
/// part at 66-96%.
#[derive(Clone, Copy)]
pub struct Ahead {
    bytes: usize,
    /// Bytes per part, divided once per matrix, not once per row.
    per: usize,
    n: usize,
    /// How far ahead the lines asked for are.
    skip: usize,
}

impl Ahead {
    pub fn new(bytes: usize, n: usize) -> Ahead {
        let skip = if bytes <= WHOLE_ROW_BYTES {
            PREFETCH_ROWS * bytes
        } else {
            PREFETCH_BYTES
        };
        Ahead {
            bytes,
            per: bytes / n.max(1),
            n,
            skip,
        }
    }

    /// Rows of `nb` blocks of type `B`, a part per block.
    pub fn blocks<B>(nb: usize) -> Ahead {
        Ahead::new(nb * std::mem::size_of::<B>(), nb)
    }

    /// Asks for what lies ahead of parts `k..k + len` of the row at `start`: for a short row,
    /// the whole row [`PREFETCH_ROWS`] ahead when `k` is 0; for a long one, the same parts
    /// [`PREFETCH_BYTES`] ahead, the last whole part's call reaching the row's end.
    #[inline(always)]
    pub fn part(self, start: *const u8, k: usize, len: usize) {
        let row = start.wrapping_add(self.skip);
        if self.bytes <= WHOLE_ROW_BYTES {
            if k == 0 {
                prefetch_stream_span(row, row.wrapping_add(self.bytes));
            }
            return;
        }
        let end = if k + 2 * len > self.n {
            self.bytes
        } else {
            (k + len) * self.per
        };
        let from = (row as usize + k * self.per).next_multiple_of(64);
        prefetch_stream_span(from as *const u8, row.wrapping_add(end))
    }
}

/// `dot(a, b)` of two f32 slices (attention scores).
#[inline]
pub fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::dot_f32_avx2(a, b) },
        _ => reference::dot_f32_ref(a, b),
    }
}

/// `out[r][t] = dot(w[r], x[t])` for 4 rows and 2 tokens (the batched-prefill GEMM's tile for a
/// pair of tokens left after the 4 x 3 tiles), the rows widened as they are read.
#[inline]
pub fn dot4x2<E: Widen>(isa: Isa, w: [&[E]; 4], x: [&[f32]; 2]) -> [[f32; 2]; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2, FMA and F16C.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::dot4x2_avx2(w, x) },
        _ => reference::dot4xt_ref(w, x),
    }
}

/// `out[r][t] = dot(w[r], x[t])` for 4 rows and 3 tokens (the batched-prefill GEMM's main tile),
/// the rows widened as they are read.
#[inline]
pub fn dot4x3<E: Widen>(isa: Isa, w: [&[E]; 4], x: [&[f32]; 3]) -> [[f32; 3]; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2, FMA and F16C.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::dot4x3_avx2(w, x) },
        _ => reference::dot4xt_ref(w, x),
    }
}

/// RMSNorm of `x` scaled by `w` into `out` ([`reference::rmsnorm_ref`]).
#[inline]
pub fn rmsnorm(isa: Isa, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2 and FMA.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::rmsnorm_avx2(x, w, eps, out) },
        _ => reference::rmsnorm_ref(x, w, eps, out),
    }
}

/// `gate = silu(gate) * up` ([`reference::silu_mul_ref`]), SwiGLU's product.
#[inline]
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2 and FMA.
        Isa::Avx2 | Isa::Avx512 => unsafe { x86::avx2::silu_mul_avx2(gate, up) },
        _ => reference::silu_mul_ref(gate, up),
    }
}

/// An element that widens to f32: the KV cache's (f32, f16) and the float weight rows the
/// prefill tiles read in place (f32, bf16, f16: [`dot4x3`]).
pub trait Widen: bytemuck::Pod + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// Eight elements from `p`, widened to f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and F16C, and `p` must point at eight readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

macro_rules! widen {
    ($elem:ty, $to_f32:expr, $load8:path) => {
        impl Widen for $elem {
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $to_f32(self)
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn load8(p: *const $elem) -> std::arch::x86_64::__m256 {
                $load8(p)
            }
        }
    };
}
widen!(f32, std::convert::identity, x86::load_f32x8);
widen!(f16, f16::to_f32, x86::load_f16x8);
widen!(half::bf16, half::bf16::to_f32, x86::load_bf16x8);

/// An element of the KV cache: f32, or f16 as llama.cpp keeps it by default (ADR 36).
pub trait KvElem: Widen {
    /// `x` into `out` (as long), rounded to nearest.
    fn store(x: &[f32], out: &mut [Self]);
}

impl KvElem for f32 {
    fn store(x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(x);
    }
}

impl KvElem for f16 {
    fn store(x: &[f32], out: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        out.convert_from_f32_slice(x);
    }
}

/// The unnormalized attention of `ms.len() / 2` query heads that share one key-value head over
/// `sc.len() / heads` cached positions, each head's `(max, sum)` into `ms`
/// ([`reference::attend_heads_ref`]; [`reference::merge_attention_ref`] merges parts).
#[inline]
#[allow(clippy::too_many_arguments)] // the reference's signature, which every ISA's keeps
pub fn attend<T: KvElem>(
    isa: Isa,
    q: &[f32],
    kv: (&[T], &[T]),
    at: (usize, usize),
    scale: f32,
    sc: &mut [f32],
    out: &mut [f32],
    ms: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::Avx512` are only produced after runtime feature
        // detection, and both imply AVX2, FMA and F16C.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            x86::avx2::attend_heads_avx2(q, kv, at, scale, sc, out, ms)
        },
        _ => reference::attend_heads_ref(q, kv, at, scale, sc, out, ms),
    }
}
