//! The register-blocked dequantize-matmul for prefill and training (`m` from a few dozen rows
//! up): each cube computes a `BLOCK × BLOCK` (64 × 64) output tile with 256 units holding a
//! 4 × 4 accumulator each in f32 registers. Per step of `BK` (16) along the reduction, the
//! cube stages a 64 × 16 slice of the input and a 16 × 64 tile of the weight in shared memory,
//! the weight dequantized while it is staged (table in shared memory, one f32 multiply per
//! element, as bitsandbytes), so the dense weight never exists in global memory. Each staged
//! value is then read 64 times from shared memory, against 16 times in the 16 × 16 kernel.
//!
//! - forward, `y[m, n] = Σ_k x[m, k] · W[n, k]` (`transposed = false`, `W` is `[n, k]`);
//! - backward-input, `dx[m, k] = Σ_n dy[m, n] · W[n, k]` (`transposed = true`: the reduction
//!   runs over the weight's rows).

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::nf4_nibble;

/// Output tile edge of a cube.
pub const BLOCK: usize = 64;
/// Reduction step staged in shared memory.
const BK: usize = 16;
/// Units per cube edge (`BLOCK / 4`: each unit holds 4 × 4 outputs).
const UNITS: usize = 16;

/// `out[m, n] = Σ_kk lhs[m, kk] · B[kk, n]`, `B[kk, j] = W[j, kk]` (`transposed = false`) or
/// `W[kk, j]` (`transposed = true`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn nf4_matmul_tiled_kernel<F: Float>(
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
    let t = ty * UNITS + tx;
    let row0 = CUBE_POS_Y as usize * BLOCK;
    let col0 = CUBE_POS_X as usize * BLOCK;

    let mut lut = Shared::<[f32]>::new_slice(16usize);
    if t < 16 {
        lut[t] = code[t];
    }
    let mut a_s = Shared::<[f32]>::new_slice(BK * BLOCK);
    let mut b_s = Shared::<[f32]>::new_slice(BK * BLOCK);
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for i in 0..16usize {
        acc[i] = 0.0f32;
    }
    let mut a = Array::<f32>::new(4usize);
    let mut b = Array::<f32>::new(4usize);
    sync_cube();

    let steps = k.div_ceil(BK);
    for s in 0..steps {
        let k0 = s * BK;
        // Stage lhs[row0.., k0..] as a_s[kk][r]: consecutive units read consecutive kk.
        #[unroll]
        for q in 0..4usize {
            let idx = t + q * UNITS * UNITS;
            let r = idx / BK;
            let kk = idx % BK;
            let mut v = 0.0f32;
            if row0 + r < m && k0 + kk < k {
                v = f32::cast_from(lhs[(row0 + r) * k + k0 + kk]);
            }
            a_s[kk * BLOCK + r] = v;
        }
        // Stage B[k0.., col0..] as b_s[kk][c], decoded from the packed weight.
        #[unroll]
        for q in 0..4usize {
            let idx = t + q * UNITS * UNITS;
            let mut c = idx / BK;
            let mut kk = idx % BK;
            if transposed {
                // W[kk, c]: consecutive units read along the weight's row.
                c = idx % BLOCK;
                kk = idx / BLOCK;
            }
            let mut v = 0.0f32;
            if col0 + c < n && k0 + kk < k {
                let mut e = (col0 + c) * k + k0 + kk;
                if transposed {
                    e = (k0 + kk) * n + col0 + c;
                }
                v = lut[nf4_nibble(packed, e)] * absmax[e / blocksize];
            }
            b_s[kk * BLOCK + c] = v;
        }
        sync_cube();

        #[unroll]
        for kk in 0..BK {
            #[unroll]
            for i in 0..4usize {
                a[i] = a_s[kk * BLOCK + ty + i * UNITS];
                b[i] = b_s[kk * BLOCK + tx + i * UNITS];
            }
            #[unroll]
            for i in 0..4usize {
                #[unroll]
                for j in 0..4usize {
                    acc[i * 4 + j] += a[i] * b[j];
                }
            }
        }
        sync_cube();
    }

    #[unroll]
    for i in 0..4usize {
        let r = row0 + ty + i * UNITS;
        #[unroll]
        for j in 0..4usize {
            let c = col0 + tx + j * UNITS;
            if r < m && c < n {
                out[r * n + c] = F::cast_from(acc[i * 4 + j]);
            }
        }
    }
}

/// Launches [`nf4_matmul_tiled_kernel`] for `out[m, n]`; the arguments are those of
/// [`launch_nf4_matmul`](crate::launch_nf4_matmul).
#[allow(clippy::too_many_arguments)]
pub fn launch_nf4_matmul_tiled(
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
    let cube_dim = CubeDim::new_2d(UNITS as u32, UNITS as u32);
    let cube_count = CubeCount::Static(n.div_ceil(BLOCK) as u32, m.div_ceil(BLOCK) as u32, 1);
    // SAFETY: the buffers hold at least the declared number of elements.
    unsafe {
        nf4_matmul_tiled_kernel::launch(
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
