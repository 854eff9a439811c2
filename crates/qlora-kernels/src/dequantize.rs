//! Dequantization of a packed 4-bit weight: `w = code[nibble] * absmax[block]` (one f32
//! multiply, bit-exact with bitsandbytes), then a cast to the output float type.

use cubecl::prelude::*;
use cubecl::server::Handle;

/// The 4-bit code of flat element `e` of a packed weight (bnb order: element `2i` in the high
/// nibble of byte `i`, bytes little-endian in `u32` words).
#[cube]
#[allow(clippy::manual_is_multiple_of)] // `%` is what the kernel language expands
pub(crate) fn nf4_nibble(packed: &[u32], e: usize) -> usize {
    let word = packed[e / 8];
    let byte = (word >> (((e % 8) / 2 * 8) as u32)) & 0xffu32;
    let mut nibble = byte & 0xfu32;
    if e % 2 == 0 {
        nibble = byte >> 4;
    }
    nibble as usize
}

/// The value of flat element `e` of a packed weight: its code's table entry times its block's
/// absmax.
#[cube]
pub(crate) fn nf4_element(
    packed: &[u32],
    absmax: &[f32],
    code: &[f32],
    e: usize,
    #[comptime] blocksize: usize,
) -> f32 {
    code[nf4_nibble(packed, e)] * absmax[e / blocksize]
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

/// The bandwidth path: one unit per 16 bytes of codes (a 4-word vector load, 32 elements, one
/// absmax block since the blocksize is a multiple of 32), the table in shared memory, and
/// 4-wide vector stores. `N` is 4.
#[cube(launch)]
pub(crate) fn dequantize_vec_kernel<F: Float, N: Size>(
    packed: &[Vector<u32, N>],
    absmax: &[f32],
    code: &[f32],
    out: &mut [Vector<F, N>],
    units: usize,
    #[comptime] blocksize: usize,
    #[define(F)] _dtype: ElemType,
) {
    let mut lut = Shared::<[f32]>::new_slice(16usize);
    let t = UNIT_POS as usize;
    if t < 16 {
        lut[t] = code[t];
    }
    sync_cube();
    let pos = ABSOLUTE_POS;
    if pos < units {
        let words = packed[pos];
        let a = absmax[pos * 32 / blocksize];
        #[unroll]
        for j in 0..4usize {
            let word = words.extract(j);
            #[unroll]
            for h in 0..2usize {
                let mut v = Vector::empty();
                #[unroll]
                for b in 0..2usize {
                    let byte = (word >> (((h * 2 + b) * 8) as u32)) & 0xffu32;
                    v.insert(b * 2, F::cast_from(lut[(byte >> 4) as usize] * a));
                    v.insert(b * 2 + 1, F::cast_from(lut[(byte & 0xfu32) as usize] * a));
                }
                out[pos * 8 + j * 2 + h] = v;
            }
        }
    }
}

/// Dequantizes `numel` elements into `out` (a buffer of `numel` elements of `dtype`): with the
/// vectorised kernel when `numel` and the blocksize are multiples of 32 (every real weight),
/// else one unit per packed word.
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
    let blocks = numel.div_ceil(blocksize);
    let cube_dim = CubeDim::new_1d(256);
    if numel.is_multiple_of(32) && blocksize.is_multiple_of(32) {
        let units = numel / 32;
        // SAFETY: the buffers hold at least the declared number of elements.
        unsafe {
            dequantize_vec_kernel::launch(
                client,
                CubeCount::Static(units.div_ceil(256) as u32, 1, 1),
                cube_dim,
                4,
                BufferArg::from_raw_parts(packed, numel / 8),
                BufferArg::from_raw_parts(absmax, blocks),
                BufferArg::from_raw_parts(code, 16),
                BufferArg::from_raw_parts(out, numel),
                units,
                blocksize,
                dtype,
            );
        }
        return;
    }
    let words = numel.div_ceil(8);
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
