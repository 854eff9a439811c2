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
//! The nearest code is exact by default, the rule of bnb's CUDA quantizer (from its source; no
//! GPU has checked it); [`AbsmaxRounding::CpuTable`] takes bnb's CPU build's 65 536-entry lookup
//! table instead, one step off for ~0.25 % of blocks, to write what bnb writes on a CPU bit for
//! bit. Files of either load as they are.

use crate::{AbsmaxRounding, Blocksize, Nf4Error, dynamic_map, dynamic_map_signed};

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
        Self::quantize_with(absmax, AbsmaxRounding::Nearest, tensor)
    }

    /// [`DoubleQuantAbsmax::quantize`] with the 8-bit codes chosen as `rounding` says.
    pub fn quantize_with(
        absmax: &[f32],
        rounding: AbsmaxRounding,
        tensor: &str,
    ) -> Result<Self, Nf4Error> {
        let offset = mean_f32(absmax);
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let nb = Blocksize::NESTED;
        let map = dynamic_map_signed();
        let (codes, nested_absmax) =
            dynamic_map::quantize_blockwise_8bit_with(&centered, map, nb.get(), rounding, tensor)?;
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
        reconstruct_absmax(
            &self.codes,
            &self.nested_absmax,
            self.offset,
            &self.nested_map,
            self.nested_blocksize.get(),
        )
    }
}

/// `map[codes[i]] * nested_absmax[i / nested_blocksize] + offset` for every block: an f32
/// multiply, then an f32 add (never fused), as bnb's `dequantize_blockwise` + offset.
pub fn reconstruct_absmax(
    codes: &[u8],
    nested_absmax: &[f32],
    offset: f32,
    map: &[f32; 256],
    nested_blocksize: usize,
) -> Vec<f32> {
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| map[c as usize] * nested_absmax[i / nested_blocksize] + offset)
        .collect()
}

/// The f32 mean exactly as torch's `absmax.mean()` computes it on an AVX2 CPU with one
/// thread: the sum of ATen's `cascade_sum` (8-lane vectors, 4-way ILP, 4-level cascade), then one
/// f32 division by the count. Empty → NaN.
///
/// Torch splits reductions of more than 32 768 elements across threads, which changes the
/// order; beyond that size the result may differ from a multi-threaded torch run by an ulp.
pub fn mean_f32(x: &[f32]) -> f32 {
    torch_sum_f32(x) / x.len() as f32
}

const VEC: usize = 8;
type Lanes = [f32; VEC];

/// ATen `vectorized_inner_sum` (contiguous, ≥ 8 elements) or `scalar_inner_sum`.
fn torch_sum_f32(x: &[f32]) -> f32 {
    let n = x.len();
    if n < VEC {
        return row_sum(|i| x[i], n, |a: &mut f32, b| *a += b);
    }
    let vec_size = n / VEC;
    let load = |i: usize| -> Lanes { core::array::from_fn(|l| x[i * VEC + l]) };
    let acc = row_sum(load, vec_size, |a: &mut Lanes, b| {
        for l in 0..VEC {
            a[l] += b[l];
        }
    });
    let mut total = 0f32;
    for &v in &x[vec_size * VEC..] {
        total += v;
    }
    for v in acc {
        total += v;
    }
    total
}

/// ATen `row_sum`: the row viewed as `[-1, 4]`, summed per column by `multi_row_sum`, the
/// remainder added to column 0, then columns 1..3 added to column 0.
fn row_sum<T: Copy + Default>(
    load: impl Fn(usize) -> T,
    size: usize,
    add: impl Fn(&mut T, T),
) -> T {
    const ILP: usize = 4;
    let size_ilp = size / ILP;
    let mut partial = multi_row_sum::<T, ILP>(|i, k| load(i * ILP + k), size_ilp, &add);
    for i in size_ilp * ILP..size {
        add(&mut partial[0], load(i));
    }
    for k in 1..ILP {
        let v = partial[k];
        add(&mut partial[0], v);
    }
    partial[0]
}

/// Index loops mirror ATen's source line for line.
/// ATen `multi_row_sum`: a 4-level cascade of accumulators, each level flushed into the next
/// every `2^level_power` rows.
#[allow(clippy::needless_range_loop)]
fn multi_row_sum<T: Copy + Default, const N: usize>(
    load: impl Fn(usize, usize) -> T,
    size: usize,
    add: &impl Fn(&mut T, T),
) -> [T; N] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 2 {
        1
    } else {
        64 - ((size - 1) as u64).leading_zeros() as usize
    };
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[T::default(); N]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..N {
                add(&mut acc[0][k], load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..N {
                let v = acc[j - 1][k];
                add(&mut acc[j][k], v);
                acc[j - 1][k] = T::default();
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..N {
            add(&mut acc[0][k], load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..N {
            let v = acc[j][k];
            add(&mut acc[0][k], v);
        }
    }
    acc[0]
}
