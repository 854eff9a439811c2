//! Validated quantization blocksize.

use crate::Nf4Error;

/// Number of consecutive elements (of the row-major flattened tensor) that share one absmax.
/// bnb accepts the powers of two from 32 to 4096; the QLoRA default is 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Blocksize(usize);

impl Blocksize {
    /// The default of bnb and of QLoRA: 64.
    pub const DEFAULT: Blocksize = Blocksize(64);
    /// The blocksize of the double quantization (bnb's `nested_blocksize`): 256.
    pub const NESTED: Blocksize = Blocksize(256);

    /// Validates `blocksize`; `tensor` names the tensor for the error.
    pub fn new(blocksize: usize, tensor: &str) -> Result<Self, Nf4Error> {
        if blocksize.is_power_of_two() && (32..=4096).contains(&blocksize) {
            Ok(Blocksize(blocksize))
        } else {
            Err(Nf4Error::BadBlocksize {
                tensor: tensor.to_string(),
                blocksize,
            })
        }
    }

    /// The size in elements.
    pub fn get(self) -> usize {
        self.0
    }

    /// Number of blocks covering `n` elements (the last one may be partial).
    pub fn blocks(self, n: usize) -> usize {
        n.div_ceil(self.0)
    }
}

impl Default for Blocksize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_powers_of_two_from_32_to_4096() {
        for b in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
            assert_eq!(Blocksize::new(b, "w").unwrap().get(), b);
        }
        for b in [0, 1, 16, 48, 65, 8192, 3000] {
            let e = Blocksize::new(b, "w").unwrap_err();
            assert!(matches!(e, Nf4Error::BadBlocksize { blocksize, .. } if blocksize == b));
        }
    }
}
