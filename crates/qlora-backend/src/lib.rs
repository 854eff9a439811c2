//! The NF4 weight as a Burn 0.22 tensor extension.
//!
//! Burn 0.22's `Tensor<D>` has no backend parameter and its set of backends is closed, so a new
//! storage kind enters as an extension type ([`Nf4Primitive`]) that travels through `Dispatch`
//! to a `#[backend_extension]` op trait ([`Nf4Ops`]) with one implementation per backend:
//!
//! - **Flex** (pure-Rust CPU): tiles of the weight are dequantized into cache-sized panels and
//!   multiplied with the `gemm` crate's SIMD kernels on every core; the dense weight never exists.
//! - **Cube** (feature `cube` + a runtime: `wgpu`, `cuda`): the CubeCL kernels of `qlora-kernels`
//!   on every CubeCL runtime, and **Fusion** through the macro's `#[fusion]` metadata (the op is
//!   deferred and runs after the pending fused stream).
//! - **Autodiff** over any of them: the backward of `nf4_linear` keeps only the packed weight and
//!   computes `dX = dY · dequant(W)` (Dettmers et al. 2023, *QLoRA*, §3: gradients flow through
//!   the frozen 4-bit weights into the adapters; the weights themselves get none).
//!
//! The fused training ops (attention, cross entropy, the block's element-wise parts) are
//! another crate's, `qlora-fused`: this one is the NF4 weight only.
//!
//! Model code holds an [`Nf4Weight`] (a Burn `Module` of two int parameters) and calls
//! [`nf4_linear`], [`nf4_linear_backward_input`] or [`nf4_dequantize`] on plain `Tensor`s.
#![warn(missing_docs)]

mod autodiff;
mod cpu;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod cube_tune;
mod flex;
mod host_memory;
mod ops;
mod primitive;
mod weight;

pub use cpu::CpuNf4;
#[cfg(feature = "cube")]
pub use cube_tune::{Nf4Kernel, force_nf4_kernel};
pub use flex::with_host_nf4;
pub use host_memory::keep_freed_host_memory;
pub use ops::{Nf4Ops, linear_out_shape};
pub use primitive::Nf4Primitive;
// The word layout of the two int tensors is a format fact of `qlora-nf4`.
pub use qlora_nf4::{
    Nf4Error, Nf4Layout, QuantConfig, QuantType, QuantizedTensor, decode_words, encode_words,
};
pub use weight::{
    Nf4Weight, nf4_dequantize, nf4_linear, nf4_linear_backward_input, nf4_linear_output_unused,
};
