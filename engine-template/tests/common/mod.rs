//! Helpers shared by the kernel tests.

/// Deterministic, sign-mixed test values in [-2, 2).
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 4.0
        })
        .collect()
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
