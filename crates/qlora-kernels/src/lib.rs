//! CubeCL kernels for 4-bit NF4/FP4 weights, with no Burn dependency: they run on every CubeCL
//! runtime (CUDA, ROCm, wgpu/Vulkan/Metal, the CPU runtime) and are tested against `qlora-nf4`.
//!
//! Data layout (shared with `qlora-backend`): packed bytes in little-endian `u32` words (WGSL
//! has no `u8`); a double-quantized absmax is decoded by [`decode_double_quant_absmax`] before
//! the kernels that need one f32 per block.
#![warn(missing_docs)]

mod absmax;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod dequantize;
mod gemv;
mod linear;
mod tiled;

pub use absmax::decode_double_quant_absmax;
pub use dequantize::launch_dequantize;
pub(crate) use dequantize::{nf4_element, nf4_nibble};
pub use gemv::{GEMV_MAX_M, GEMV_UNITS, launch_nf4_gemv};
pub use linear::{Nf4MatmulLaunch, TILE, launch_nf4_matmul};
pub use tiled::{BLOCK, launch_nf4_matmul_tiled};
