//! A tiled matmul with the 4-bit weight dequantized while loading its tiles into shared memory,
//! so the dense weight never exists in global memory:
//!
//! - forward, `y[m, n] = Σ_k x[m, k] · W[n, k]` (`y = x · Wᵀ`);
//! - backward-input, `dx[m, k] = Σ_n dy[m, n] · W[n, k]` (`dx = dy · W`).
//!
//! Each cube computes a `TILE × TILE` block of the output, accumulating in f32. This is the
//! correct-everywhere kernel; the fast paths belong to the performance kernels.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::nf4_element;

/// The signature of the matmul launchers ([`launch_nf4_matmul`],
/// [`launch_nf4_matmul_tiled`](crate::launch_nf4_matmul_tiled)): client, `lhs`, `packed`,
/// `absmax`, `code`, `out`, `(m, n, k)`, `transposed`, blocksize, element type.
pub type Nf4MatmulLaunch = fn(
    &Client,
    Handle,
    Handle,
    Handle,
    Handle,
    Handle,
    (usize, usize, usize),
    bool,
    usize,
    ElemType,
);

/// Output tile edge (units per cube: `TILE × TILE`).
pub const TILE: usize = 16;

/// `out[m, n] = Σ_kk lhs[m, kk] · B[kk, n]` with `B[kk, j] = W[j, kk]` (`transposed = false`,
/// `W` is `[n, k]`) or `B[kk, j] = W[kk, j]` (`transposed = true`, `W` is `[k, n]`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn nf4_matmul_kernel<F: Float>(
    lhs: &[F],
    packed: &[u32],
    absmax: &[f32],
    code: &[f32],
    out: &mut [F],
    m: usize,
    n: usize,
    k: usize,
    #[comptime] transposed: bool,
    #[comptime] blocksize: usize,
    #[define(F)] _dtype: ElemType,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let row = CUBE_POS_Y as usize * TILE + ty;
    let col = CUBE_POS_X as usize * TILE + tx;
    let mut lhs_tile = Shared::<[f32]>::new_slice(TILE * TILE);
    let mut w_tile = Shared::<[f32]>::new_slice(TILE * TILE);
    let mut acc = 0.0f32;
    let tiles = k.div_ceil(TILE);
    for t in 0..tiles {
        let kk = t * TILE + tx;
        let mut a = 0.0f32;
        if row < m && kk < k {
            a = f32::cast_from(lhs[row * k + kk]);
        }
        lhs_tile[ty * TILE + tx] = a;

        let kw = t * TILE + ty;
        let mut b = 0.0f32;
        if kw < k && col < n {
            let mut e = col * k + kw;
            if transposed {
                e = kw * n + col;
            }
            b = nf4_element(packed, absmax, code, e, blocksize);
        }
        w_tile[ty * TILE + tx] = b;
        sync_cube();

        #[unroll]
        for i in 0..TILE {
            acc += lhs_tile[ty * TILE + i] * w_tile[i * TILE + tx];
        }
        sync_cube();
    }
    if row < m && col < n {
        out[row * n + col] = F::cast_from(acc);
    }
}

/// Launches [`nf4_matmul_kernel`] for `out[m, n]`.
///
/// `numel` is the weight's element count (`n * k`), `out` a buffer of `m * n` elements of
/// `dtype`, `lhs` `m * k` elements of `dtype`.
#[allow(clippy::too_many_arguments)]
pub fn launch_nf4_matmul(
    client: &Client,
    lhs: Handle,
    packed: Handle,
    absmax: Handle,
    code: Handle,
    out: Handle,
    (m, n, k): (usize, usize, usize),
    transposed: bool,
    blocksize: usize,
    dtype: ElemType,
) {
    let numel = n * k;
    let cube_dim = CubeDim::new_2d(TILE as u32, TILE as u32);
    let cube_count = CubeCount::Static(n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, 1);
    // SAFETY: the buffers hold at least the declared number of elements.
    unsafe {
        nf4_matmul_kernel::launch(
            client,
            cube_count,
            cube_dim,
            BufferArg::from_raw_parts(lhs, m * k),
            BufferArg::from_raw_parts(packed, numel.div_ceil(2).div_ceil(4)),
            BufferArg::from_raw_parts(absmax, numel.div_ceil(blocksize)),
            BufferArg::from_raw_parts(code, 16),
            BufferArg::from_raw_parts(out, m * n),
            m,
            n,
            k,
            transposed,
            blocksize,
            dtype,
        );
    }
}
