//! The fused ops on `CubeBackend` (every CubeCL runtime) and, through the macro's `Fusion`
//! routing, on `Fusion<CubeBackend>`. Causal attention has its own tiled kernels ([`attention`]),
//! the block ops one kernel a pass ([`block`]); the others use the composite default bodies of
//! their traits, written with the backend's own kernels (matmul, softmax, scatter; the loss chunk
//! by chunk), which Fusion merges where it can.

mod attention;
mod attention_kernels;
mod block;
mod block_kernels;
mod tensors;

use burn_cubecl::CubeBackend;

use crate::ops::{DropoutOps, LinearCrossEntropyOps, LoraLinearOps};

/// The backend's own matmul, max/sum reductions and scatter, over chunks of rows: at most
/// `CHUNK_LOGITS` logits held at a time.
impl LinearCrossEntropyOps for CubeBackend {}

/// The backend's generator, reseeded with each call's seed, and its element-wise multiply.
impl DropoutOps for CubeBackend {}

/// The backend's NF4 linear and matmuls, composed; Fusion merges the element-wise parts.
impl LoraLinearOps for CubeBackend {}
