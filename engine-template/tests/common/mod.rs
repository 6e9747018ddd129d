//! Helpers shared by the kernel tests.

/// A deterministic xorshift stream of `n` words.
fn stream(n: usize, seed: u32) -> impl Iterator<Item = u32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n).map(move |_| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    })
}

/// Deterministic, sign-mixed test values in [-2, 2).
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    stream(n, seed)
        .map(|s| (s as f32 / u32::MAX as f32 - 0.5) * 4.0)
        .collect()
}

/// Deterministic bytes: every nibble, 6-bit code and scale byte turns up.
pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
    stream(n, seed).map(|s| (s >> 7) as u8).collect()
}

/// `(Σ w·x, Σ |w·x|)` in f64: the oracle dot and the magnitude its error bound scales with.
pub fn dot_f64(w: &[f32], x: &[f32]) -> (f64, f64) {
    let dot = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    let mag = w
        .iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    (dot, mag)
}
