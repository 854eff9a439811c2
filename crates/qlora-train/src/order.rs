//! Where training is in its data: a seeded permutation per epoch and a position in it, so a
//! resumed run reads exactly the samples the interrupted one would have.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele et al. 2014).
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A Fisher–Yates permutation of `0..n` from `seed`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed;
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Splits `n` items into (train, eval) index lists: a seeded shuffle, the last
/// `round(n · fraction)` (at least 1 when `fraction > 0` and n > 1) held out.
pub fn split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let p = permutation(n, seed ^ 0x5EED);
    let mut k = (n as f64 * fraction).round() as usize;
    if fraction > 0.0 && n > 1 {
        k = k.clamp(1, n - 1);
    }
    let (train, eval) = p.split_at(n - k.min(n));
    (train.to_vec(), eval.to_vec())
}

/// The position in the data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Samples of this epoch already read.
    pub index: usize,
}

impl DataPosition {
    /// The next `count` sample indices (of `n`), advancing epochs as needed.
    pub fn take(&mut self, count: usize, n: usize, seed: u64) -> Vec<usize> {
        let mut out = Vec::with_capacity(count);
        let mut order = permutation(n, seed.wrapping_add(self.epoch as u64));
        while out.len() < count {
            if self.index == n {
                self.epoch += 1;
                self.index = 0;
                order = permutation(n, seed.wrapping_add(self.epoch as u64));
            }
            out.push(order[self.index]);
            self.index += 1;
        }
        out
    }
}
