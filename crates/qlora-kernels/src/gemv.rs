//! Decode GEMV: `y[m, n] = Σ_k x[m, k] · W[n, k]` for a few rows of `x` (`m ≤ GEMV_MAX_M`, the
//! token-by-token generation case), in one pass over the packed weight and no dense tile.
//!
//! One cube per output row `n` of the weight: its units stride over the row's packed words
//! (8 codes each, all in one absmax block since every blocksize is a multiple of 8), decode them
//! through the 16-entry table held in shared memory, multiply with the `m` rows of `x` and
//! accumulate in f32 registers; a tree reduction in shared memory sums the units. Memory traffic
//! is the packed weight (half a byte per element) plus its absmax, against two bytes per
//! element for a dense bf16 GEMV.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::nf4_element;

/// Units per cube (a power of two).
pub const GEMV_UNITS: usize = 64;

const GEMV_LOG2: usize = GEMV_UNITS.trailing_zeros() as usize;

/// The most rows of `x` the GEMV takes.
pub const GEMV_MAX_M: usize = 8;

/// See the module docs. `aligned`: `k % 8 == 0`, so every row starts on a word.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn nf4_gemv_kernel<F: Float>(
    x: &[F],
    packed: &[u32],
    absmax: &[f32],
    code: &[f32],
    out: &mut [F],
    n: usize,
    k: usize,
    #[comptime] m: usize,
    #[comptime] aligned: bool,
    #[comptime] blocksize: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let u = UNIT_POS_X as usize;
    let mut lut = Shared::<[f32]>::new_slice(16usize);
    if u < 16 {
        lut[u] = code[u];
    }
    sync_cube();

    let mut acc = Array::<f32>::new(m);
    #[unroll]
    for i in 0..m {
        acc[i] = 0.0f32;
    }
    if row < n {
        let start = row * k;
        if aligned {
            let words = k / 8;
            let first = start / 8;
            for it in 0..words.div_ceil(GEMV_UNITS) {
                let w = u + it * GEMV_UNITS;
                if w < words {
                    let word = packed[first + w];
                    let a = absmax[(first + w) * 8 / blocksize];
                    let kk = w * 8;
                    #[unroll]
                    for j in 0..4usize {
                        let byte = (word >> ((j * 8) as u32)) & 0xffu32;
                        let hi = lut[(byte >> 4) as usize] * a;
                        let lo = lut[(byte & 0xfu32) as usize] * a;
                        #[unroll]
                        for i in 0..m {
                            let base = i * k + kk + j * 2;
                            acc[i] +=
                                hi * f32::cast_from(x[base]) + lo * f32::cast_from(x[base + 1]);
                        }
                    }
                }
            }
        } else {
            for it in 0..k.div_ceil(GEMV_UNITS) {
                let kk = u + it * GEMV_UNITS;
                if kk < k {
                    let v = nf4_element(packed, absmax, code, start + kk, blocksize);
                    #[unroll]
                    for i in 0..m {
                        acc[i] += v * f32::cast_from(x[i * k + kk]);
                    }
                }
            }
        }
    }

    let mut red = Shared::<[f32]>::new_slice(GEMV_UNITS * m);
    #[unroll]
    for i in 0..m {
        red[i * GEMV_UNITS + u] = acc[i];
    }
    sync_cube();
    for level in 0..GEMV_LOG2 {
        let s = (GEMV_UNITS / 2) >> level;
        if u < s {
            #[unroll]
            for i in 0..m {
                let sum = red[i * GEMV_UNITS + u] + red[i * GEMV_UNITS + u + s];
                red[i * GEMV_UNITS + u] = sum;
            }
        }
        sync_cube();
    }
    if row < n && u < m {
        out[u * n + row] = F::cast_from(red[u * GEMV_UNITS]);
    }
}

/// Launches [`nf4_gemv_kernel`]: `out[m, n] = x[m, k] · Wᵀ` for a weight `W` of `[n, k]`.
///
/// # Panics
/// If `m` is 0 or above [`GEMV_MAX_M`].
#[allow(clippy::too_many_arguments)]
pub fn launch_nf4_gemv(
    client: &Client,
    x: Handle,
    packed: Handle,
    absmax: Handle,
    code: Handle,
    out: Handle,
    (m, n, k): (usize, usize, usize),
    blocksize: usize,
    dtype: ElemType,
) {
    assert!(
        (1..=GEMV_MAX_M).contains(&m),
        "launch_nf4_gemv: m = {m}, the GEMV takes 1 to {GEMV_MAX_M} rows"
    );
    let numel = n * k;
    // Rows over a 2-D grid: a dimension holds 65,535 cubes at most.
    let gx = n.min(65_535);
    let gy = n.div_ceil(gx);
    // SAFETY: the buffers hold at least the declared number of elements.
    unsafe {
        nf4_gemv_kernel::launch(
            client,
            CubeCount::Static(gx as u32, gy as u32, 1),
            CubeDim::new_1d(GEMV_UNITS as u32),
            BufferArg::from_raw_parts(x, m * k),
            BufferArg::from_raw_parts(packed, numel.div_ceil(2).div_ceil(4)),
            BufferArg::from_raw_parts(absmax, numel.div_ceil(blocksize)),
            BufferArg::from_raw_parts(code, 16),
            BufferArg::from_raw_parts(out, m * n),
            n,
            k,
            m,
            k % 8 == 0,
            blocksize,
            dtype,
        );
    }
}
