//! [`Nf4Primitive`]: the NF4 weight as it crosses Burn's `Dispatch` boundary.

use burn::backend::{Backend, ExtensionType, tensor::IntTensor};

use crate::Nf4Layout;

/// The packed NF4 weight as backend primitives: Burn 0.22's closed backend set admits no new
/// tensor kind, so the weight is an extension type whose tensor fields `Dispatch` maps to the
/// selected backend and whose `layout` passes through unchanged.
///
/// See [`Nf4Layout`] for the word layout of `packed` and `scales`.
#[derive(ExtensionType, Debug, Clone)]
#[cfg_attr(feature = "cube", extension_type(fusion))]
pub struct Nf4Primitive<B: Backend> {
    /// Packed 4-bit codes, `U32` words.
    pub packed: IntTensor<B>,
    /// Block scales (plain or double-quantized), `U32` words.
    pub scales: IntTensor<B>,
    /// Shape and quantization constants.
    pub layout: Nf4Layout,
}
