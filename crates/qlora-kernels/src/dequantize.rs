//! Dequantization of a packed 4-bit weight: `w = code[nibble] * absmax[block]` (one f32
//! multiply, bit-exact with bitsandbytes), then a cast to the output float type.

use cubecl::prelude::*;
use cubecl::server::Handle;

/// The value of flat element `e` of a packed weight (bnb order: element `2i` in the high nibble
/// of byte `i`, bytes little-endian in `u32` words).
#[cube]
#[allow(clippy::manual_is_multiple_of)] // `%` is what the kernel language expands
pub(crate) fn nf4_element(
    packed: &[u32],
    absmax: &[f32],
    code: &[f32],
    e: usize,
    #[comptime] blocksize: usize,
) -> f32 {
    let word = packed[e / 8];
    let byte = (word >> (((e % 8) / 2 * 8) as u32)) & 0xffu32;
    let mut nibble = byte & 0xfu32;
    if e % 2 == 0 {
        nibble = byte >> 4;
    }
    code[nibble as usize] * absmax[e / blocksize]
}

/// One unit per packed word: 8 elements, which share one block (every blocksize is a multiple
/// of 8).
#[cube(launch)]
pub(crate) fn dequantize_kernel<F: Float>(
    packed: &[u32],
    absmax: &[f32],
    code: &[f32],
    out: &mut [F],
    numel: usize,
    #[comptime] blocksize: usize,
    #[define(F)] _dtype: ElemType,
) {
    let w = ABSOLUTE_POS;
    let base = w * 8;
    if base >= numel {
        terminate!();
    }
    let word = packed[w];
    let a = absmax[base / blocksize];
    #[unroll]
    for j in 0..4usize {
        let byte = (word >> ((j * 8) as u32)) & 0xffu32;
        let e = base + j * 2;
        if e < numel {
            out[e] = F::cast_from(code[(byte >> 4) as usize] * a);
        }
        if e + 1 < numel {
            out[e + 1] = F::cast_from(code[(byte & 0xfu32) as usize] * a);
        }
    }
}

/// Dequantizes `numel` elements into `out` (a buffer of `numel` elements of `dtype`).
///
/// `absmax` holds one f32 per block (decoded already when double-quantized), `code` the 16
/// values of the table.
#[allow(clippy::too_many_arguments)]
pub fn launch_dequantize(
    client: &Client,
    packed: Handle,
    absmax: Handle,
    code: Handle,
    numel: usize,
    blocksize: usize,
    out: Handle,
    dtype: ElemType,
) {
    let words = numel.div_ceil(8);
    let blocks = numel.div_ceil(blocksize);
    let cube_dim = CubeDim::new_1d(256);
    let cube_count = CubeCount::Static(words.div_ceil(256) as u32, 1, 1);
    // SAFETY: the buffers hold at least the declared number of elements.
    unsafe {
        dequantize_kernel::launch(
            client,
            cube_count,
            cube_dim,
            BufferArg::from_raw_parts(packed, numel.div_ceil(2).div_ceil(4)),
            BufferArg::from_raw_parts(absmax, blocks),
            BufferArg::from_raw_parts(code, 16),
            BufferArg::from_raw_parts(out, numel),
            numel,
            blocksize,
            dtype,
        );
    }
}
