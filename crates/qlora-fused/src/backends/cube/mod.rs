//! The fused ops on `CubeBackend` (every CubeCL runtime) and, through the macro's `Fusion`
//! routing, on `Fusion<CubeBackend>`. Causal attention has its own tiled kernels
//! ([`attention`]); the other ops use the composite default bodies of their traits, written with
//! the backend's own kernels (matmul, softmax, scatter), which Fusion merges where it can.

mod attention;
mod attention_kernels;

use burn_cubecl::CubeBackend;

use crate::ops::{BlockOps, DropoutOps, LinearCrossEntropyOps, LoraLinearOps};

/// The backend's own matmul, max/sum reductions and scatter: all logits are held.
impl LinearCrossEntropyOps for CubeBackend {}

/// Element-wise ops that Fusion merges into few kernels.
impl BlockOps for CubeBackend {}

/// The backend's generator, reseeded with each call's seed, and its element-wise multiply.
impl DropoutOps for CubeBackend {}

/// The backend's NF4 linear and matmuls, composed; Fusion merges the element-wise parts.
impl LoraLinearOps for CubeBackend {}
