//! Block-wise 4-bit dequantization: `w = code[nibble] * absmax[block]`, one f32 multiply (bnb's
//! `cdequantize_blockwise_cpu_nf4_fp32`), then a round-to-nearest-even cast to the output type.
//!
//! The hot loop reads one packed byte and looks both of its values up at once in a 256-entry
//! table of value pairs; groups of blocks go to rayon tasks. Any element range can be produced
//! (row ranges for tiles and streaming); the range's first block may be entered mid-way.

use rayon::prelude::*;

use crate::FloatElement;

/// Elements produced by one rayon task.
const TASK_ELEMS: usize = 1 << 15;

/// Byte → (value of the high nibble, value of the low nibble).
pub fn pair_table(code: &[f32; 16]) -> [[f32; 2]; 256] {
    core::array::from_fn(|b| [code[b >> 4], code[b & 0x0f]])
}

/// Dequantizes the elements `start .. start + out.len()` of the flat tensor into `out`.
///
/// `absmax` holds one f32 scale per block of `blocksize` elements (already reconstructed if it
/// was double-quantized).
///
/// # Panics
/// If the range is past the end of `packed` or `absmax`, or `blocksize` is odd.
pub fn dequantize_4bit_into<T: FloatElement>(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    blocksize: usize,
    start: usize,
    out: &mut [T],
) {
    check_range(packed, absmax, blocksize, start, out.len());
    if out.is_empty() {
        return;
    }
    let pairs = pair_table(code);
    let (first, rest) = odd_head(packed, absmax, code, blocksize, start, out);
    // Tasks cover whole multiples of the blocksize, so every task starts on a byte boundary.
    let task = (TASK_ELEMS / blocksize).max(1) * blocksize;
    // Align task boundaries to the flat tensor's blocks.
    let lead = ((task - first % task) % task).min(rest.len());
    let (lead_out, aligned) = rest.split_at_mut(lead);
    dequant_run(packed, absmax, &pairs, code, blocksize, first, lead_out);
    let base = first + lead;
    aligned.par_chunks_mut(task).enumerate().for_each(|(i, o)| {
        dequant_run(packed, absmax, &pairs, code, blocksize, base + i * task, o)
    });
}

/// Sequential form of [`dequantize_4bit_into`] for callers that already run in parallel (one
/// tile each), with the byte-pair table built once by the caller ([`pair_table`]).
///
/// # Panics
/// As [`dequantize_4bit_into`].
pub fn dequantize_4bit_seq<T: FloatElement>(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    pairs: &[[f32; 2]; 256],
    blocksize: usize,
    start: usize,
    out: &mut [T],
) {
    check_range(packed, absmax, blocksize, start, out.len());
    if out.is_empty() {
        return;
    }
    let (first, rest) = odd_head(packed, absmax, code, blocksize, start, out);
    dequant_run(packed, absmax, pairs, code, blocksize, first, rest);
}

/// Panics with a clear message on an odd blocksize or a range past the data.
fn check_range(packed: &[u8], absmax: &[f32], blocksize: usize, start: usize, len: usize) {
    assert!(
        blocksize.is_multiple_of(2),
        "blocksize must be even, got {blocksize}"
    );
    let end = start + len;
    assert!(
        end <= packed.len() * 2 && end <= absmax.len() * blocksize,
        "dequantize range {start}..{end} is past the quantized data ({} codes, {} blocks)",
        packed.len() * 2,
        absmax.len()
    );
}

/// An odd start: produces one element so the rest starts on a byte boundary.
/// Returns the next element index and the rest of `out`.
#[inline]
fn odd_head<'a, T: FloatElement>(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    blocksize: usize,
    start: usize,
    out: &'a mut [T],
) -> (usize, &'a mut [T]) {
    if start % 2 == 1 {
        let (h, r) = out.split_at_mut(1);
        h[0] = T::from_f32(code[(packed[start / 2] & 0x0f) as usize] * absmax[start / blocksize]);
        (start + 1, r)
    } else {
        (start, out)
    }
}

/// Sequential dequantization of `out.len()` elements from the even element index `start`.
#[inline]
fn dequant_run<T: FloatElement>(
    packed: &[u8],
    absmax: &[f32],
    pairs: &[[f32; 2]; 256],
    code: &[f32; 16],
    blocksize: usize,
    start: usize,
    out: &mut [T],
) {
    debug_assert!(start.is_multiple_of(2));
    let mut pos = start;
    let mut o = 0;
    while o < out.len() {
        let block = pos / blocksize;
        let block_end = ((block + 1) * blocksize).min(start + out.len());
        let n = block_end - pos;
        let a = absmax[block];
        let bytes = &packed[pos / 2..(pos + n) / 2];
        let dst = &mut out[o..o + n];
        for (d, &b) in dst.chunks_exact_mut(2).zip(bytes) {
            let p = pairs[b as usize];
            d[0] = T::from_f32(p[0] * a);
            d[1] = T::from_f32(p[1] * a);
        }
        if n % 2 == 1 {
            dst[n - 1] = T::from_f32(code[(packed[(pos + n - 1) / 2] >> 4) as usize] * a);
        }
        pos += n;
        o += n;
    }
}
