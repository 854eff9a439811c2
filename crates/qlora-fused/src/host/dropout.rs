//! The seeded dropout of [`crate::ops::DropoutOps`] on host memory: element `i` is kept when the
//! top 24 bits of SplitMix64(`seed + (i + 1) · φ`) fall below `(1 − prob) · 2²⁴` (Steele et al.
//! 2014; the counter-based use as in JAX's and Philox-style generators), so any chunk of the
//! tensor draws its mask alone, in parallel, and the backward pass draws the same one.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether element `i` is kept under `seed`, for a keep threshold from [`threshold`].
#[inline]
fn kept(seed: u64, i: usize, threshold: u64) -> bool {
    let z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (splitmix64(z) >> 40) < threshold
}

fn threshold(prob: f32) -> u64 {
    ((1.0 - prob as f64) * (1u64 << 24) as f64).round() as u64
}

/// `x ∘ mask / (1 − prob)` (the same for the gradient: dropout is its own adjoint).
pub fn seeded_dropout(x: &[f32], prob: f32, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    seeded_dropout_into(x, prob, seed, &mut out);
    out
}

/// [`seeded_dropout`] into `out` (`out.len() == x.len()`).
pub fn seeded_dropout_into(x: &[f32], prob: f32, seed: u64, out: &mut [f32]) {
    apply(x, prob, seed, out, |o, v| *o = v);
}

/// `acc += x ∘ mask / (1 − prob)`: the masked value added where the element is kept, `acc`
/// unchanged where it is dropped (the same sum as adding [`seeded_dropout`]'s output).
pub fn seeded_dropout_add(x: &[f32], prob: f32, seed: u64, acc: &mut [f32]) {
    apply(x, prob, seed, acc, |o, v| *o += v);
}

/// Runs `store(out_i, masked x_i)` for every element, in parallel chunks.
fn apply(x: &[f32], prob: f32, seed: u64, out: &mut [f32], store: impl Fn(&mut f32, f32) + Sync) {
    assert_eq!(
        x.len(),
        out.len(),
        "seeded dropout: input and output lengths"
    );
    let (t, scale) = (threshold(prob), 1.0 / (1.0 - prob));
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (o, x))| {
            let base = c * CHUNK;
            for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                let v = if kept(seed, base + j, t) {
                    x * scale
                } else {
                    0.0
                };
                store(o, v);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_asked_fraction_scaled_and_the_same_mask_per_seed() {
        let x = vec![1.0f32; 200_000];
        let a = seeded_dropout(&x, 0.1, 7);
        let kept = a.iter().filter(|v| **v != 0.0).count() as f64 / x.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(a, seeded_dropout(&x, 0.1, 7));
        assert_ne!(a, seeded_dropout(&x, 0.1, 8));
    }
}
