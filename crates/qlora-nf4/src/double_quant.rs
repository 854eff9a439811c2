//! Double quantization of the absmax (QLoRA §3, "Double Quantization"): the f32 block scales
//! are themselves quantized to 8 bits, cutting the scale cost from 0.5 to 0.127 bits per weight.
//!
//! ```text
//! offset        = mean(absmax)                               (f32)
//! nested_absmax = per 256-block max |absmax - offset|         (f32)
//! codes[i]      = nearest code of (absmax[i] - offset) * (1 / nested_absmax[i/256])
//!                 on the signed dynamic map (ties to the lower index)
//! absmax'[i]    = map[codes[i]] * nested_absmax[i/256] + offset  (f32 multiply, then f32 add)
//! ```
//!
//! This matches bnb's CUDA quantizer (exact nearest). bnb's CPU build uses a 65 536-entry
//! lookup table that is one step off for ~0.25 % of blocks; files it made still load as they are.

use crate::{Blocksize, Nf4Error, dynamic_map, dynamic_map_signed};

/// The double-quantized form of a tensor's absmax.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuantAbsmax {
    /// 8-bit codes of `absmax - offset`, one per 4-bit block (bnb `weight.absmax`, U8).
    pub codes: Vec<u8>,
    /// One f32 scale per `nested_blocksize` codes (bnb `weight.nested_absmax`).
    pub nested_absmax: Vec<f32>,
    /// The mean subtracted before quantizing (bnb `nested_offset`).
    pub offset: f32,
    /// The 8-bit map (bnb `weight.nested_quant_map`, normally the signed dynamic map).
    pub nested_map: Box<[f32; 256]>,
    /// Codes per nested scale (bnb `nested_blocksize`, 256).
    pub nested_blocksize: Blocksize,
}

impl DoubleQuantAbsmax {
    /// Double-quantizes `absmax` with bnb's defaults (signed dynamic map, nested blocksize 256).
    pub fn quantize(absmax: &[f32], tensor: &str) -> Result<Self, Nf4Error> {
        let offset = mean_f32(absmax);
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let nb = Blocksize::NESTED;
        let map = dynamic_map_signed();
        let (codes, nested_absmax) =
            dynamic_map::quantize_blockwise_8bit(&centered, map, nb.get(), tensor)?;
        Ok(Self {
            codes,
            nested_absmax,
            offset,
            nested_map: Box::new(*map),
            nested_blocksize: nb,
        })
    }

    /// The reconstructed f32 absmax, `map[code] * nested_absmax + offset` per block.
    pub fn reconstruct(&self) -> Vec<f32> {
        let nb = self.nested_blocksize.get();
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| self.nested_map[c as usize] * self.nested_absmax[i / nb] + self.offset)
            .collect()
    }
}

/// The f32 mean as NumPy's `np.mean(float32)` computes it (pairwise summation, then one f32
/// division), which reproduces torch's `absmax.mean()` on every golden case. Empty → NaN.
pub fn mean_f32(x: &[f32]) -> f32 {
    pairwise_sum(x) / x.len() as f32
}

/// NumPy's `pairwise_sum` for float32: blocks of at most 128 summed with 8 accumulators,
/// larger ranges split in two at a multiple of 8.
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        let mut res = 0f32;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r: [f32; 8] = core::array::from_fn(|j| a[j]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}
