//! Decoding of double-quantized absmax (QLoRA §3): `absmax[b] = map[code[b]] * nested[b / nb]
//! + offset`, rounded after the multiply *and* after the add as bnb does.
//!
//! The multiply and the add run as two kernels: shader compilers may contract `a * b + c` into
//! one fused multiply-add, which would round once and break bit-exactness; a store between the
//! two forces the intermediate rounding on every runtime.

use cubecl::prelude::*;
use cubecl::server::Handle;

/// `out[b] = map[code[b]] * nested[b / nested_blocksize]`, reading the scales word layout of
/// `qlora-backend` (`[offset][map; 256][nested; ..][codes, four per word]`).
#[cube(launch)]
pub(crate) fn dq_scale_kernel(
    scales: &[u32],
    out: &mut [f32],
    codes_start: usize,
    #[comptime] nested_blocksize: usize,
) {
    let b = ABSOLUTE_POS;
    if b >= out.len() {
        terminate!();
    }
    let word = scales[codes_start + b / 4];
    let code = (word >> (((b % 4) * 8) as u32)) & 0xffu32;
    let map_value = f32::reinterpret::<u32>(scales[code as usize + 1usize]);
    let nested = f32::reinterpret::<u32>(scales[b / nested_blocksize + 257usize]);
    out[b] = map_value * nested;
}

/// `out[b] += offset` (word 0 of the scales).
#[cube(launch)]
pub(crate) fn dq_offset_kernel(scales: &[u32], out: &mut [f32]) {
    let b = ABSOLUTE_POS;
    if b >= out.len() {
        terminate!();
    }
    out[b] += f32::reinterpret::<u32>(scales[0]);
}

/// Decodes the `blocks` double-quantized absmax values of `scales` into a new f32 buffer.
pub fn decode_double_quant_absmax(
    client: &Client,
    scales: Handle,
    scales_words: usize,
    blocks: usize,
    codes_start: usize,
    nested_blocksize: usize,
) -> Handle {
    let out = client.empty(blocks * core::mem::size_of::<f32>());
    let cube_dim = CubeDim::new_1d(256);
    let cube_count = CubeCount::Static(blocks.div_ceil(256) as u32, 1, 1);
    // SAFETY: the buffers hold `scales_words` and `blocks` elements, as declared.
    unsafe {
        dq_scale_kernel::launch(
            client,
            cube_count.clone(),
            cube_dim,
            BufferArg::from_raw_parts(scales.clone(), scales_words),
            BufferArg::from_raw_parts(out.clone(), blocks),
            codes_start,
            nested_blocksize,
        );
        dq_offset_kernel::launch(
            client,
            cube_count,
            cube_dim,
            BufferArg::from_raw_parts(scales, scales_words),
            BufferArg::from_raw_parts(out.clone(), blocks),
        );
    }
    out
}
