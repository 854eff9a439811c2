//! Deterministic test values and a tolerance check, shared by the numeric test targets through
//! `#[path]` (the device RNG is shared by parallel tests, so inputs come from a seed here).
#![allow(dead_code)]

use burn::tensor::Tensor;

/// `n` values in `[-scale, scale)` from `seed` (an LCG).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A tensor's values as f32.
pub fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Every `|ours − want|` within `rel` times the largest `|want|`; fails on a non-finite value.
#[allow(unused_imports)]
pub use qlora_testenv::compare::assert_close;
