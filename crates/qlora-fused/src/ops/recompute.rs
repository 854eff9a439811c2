//! One autodiff node whose backward pass recomputes a whole block: what block-level gradient
//! checkpointing needs (Chen et al. 2016, *Training Deep Nets with Sublinear Memory Cost*;
//! `torch.utils.checkpoint`).
//!
//! Burn 0.22.1's own strategy (`Balanced`) works op by op: it recomputes element-wise chains
//! and keeps every matmul's output, so a decoder block still holds most of its activations. Here
//! the caller runs the block's forward pass on untracked tensors (nothing is recorded, nothing
//! kept) and hands over its output; [`recompute_in_backward`] makes that output one node of the
//! graph whose state is the block's input alone. When the backward pass reaches it, the node
//! gives the input and the output's gradient to the block ([`RecomputeBlock`]), which runs its
//! forward pass again on fresh leaves and back-propagates through it (a nested backward pass on
//! a graph of its own); the node then registers the input's gradient and each trained
//! parameter's gradient, under the parameter's own node, in the outer pass.
//!
//! The node's parents are the input and one trained parameter (which makes the node tracked
//! when the input is not, as for the first block of a model whose embeddings are frozen); the
//! other parameters' gradients are registered by node id, which is all an optimizer reads.

use std::sync::Arc;

use burn::backend::{DispatchKindConversion, DispatchTensor};
use burn::tensor::Tensor;

/// What a block computes again in the backward pass (implemented by the module-level
/// checkpointing of `qlora-nn`).
pub trait RecomputeBlock<const D: usize>: Send + Sync {
    /// Runs the block's forward pass again from `input` (a tensor outside autodiff; the block
    /// moves it onto autodiff as a fresh leaf, requiring a gradient when `input_requires_grad`)
    /// and back-propagates `output_grad` (outside autodiff, the output's shape) through it.
    /// `input` is `None` when the node was told not to keep it: the block kept it itself (for
    /// example in host memory).
    ///
    /// Returns the input's gradient (when asked) and one gradient per trained parameter, in the
    /// order the parameters were given to [`recompute_in_backward`], all outside autodiff.
    fn recompute(
        &self,
        input: Option<Tensor<D>>,
        input_requires_grad: bool,
        output_grad: Tensor<D>,
    ) -> Recomputed<D>;
}

/// The gradients a [`RecomputeBlock`] returns.
pub struct Recomputed<const D: usize> {
    /// The gradient of the block's input (`None` when it was not asked for).
    pub input: Option<Tensor<D>>,
    /// One gradient per trained parameter (`None` where the parameter got none), any rank.
    pub params: Vec<Option<DispatchTensor>>,
}

/// Makes `output` (the block's forward pass over `input`, computed on untracked tensors) a node
/// of the autodiff graph that keeps only `input` and recomputes the block in the backward pass.
///
/// - `input`: `[..]`, the block's input, tracked or not
/// - `params`: the block's trained parameters (tracked leaves), any rank
/// - `output`: the block's output, untracked
/// - `keep_input`: whether the node keeps `input` (else the block keeps what it needs)
/// - returns `output`, tracked when `input` or any parameter is
///
/// # Panics
///
/// When `input` is not on an autodiff device, when `output` is tracked (the block's forward
/// pass used a tracked tensor it was not given), on a device with Burn's `Balanced`
/// checkpointing strategy, or on a backend without this op (Flex, and CubeCL with the `cube`
/// feature, have it).
pub fn recompute_in_backward<const D: usize>(
    input: Tensor<D>,
    params: Vec<DispatchTensor>,
    output: Tensor<D>,
    block: Arc<dyn RecomputeBlock<D>>,
    keep_input: bool,
) -> Tensor<D> {
    assert!(
        input.is_autodiff(),
        "recompute_in_backward needs an autodiff device"
    );
    assert!(
        !output.is_tracked(),
        "the checkpointed block's output is tracked: its forward pass used a tracked tensor it \
         captured; pass trained tensors as the module's parameters or as the input"
    );
    use crate::backends::{on_backend, recompute};
    use burn::backend::Flex;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    if on_backend::<Flex, NoCheckpointing, D>(&input) {
        return recompute::<Flex, NoCheckpointing, D>(input, params, output, block, keep_input);
    }
    #[cfg(feature = "cube")]
    {
        use burn::backend::Cube;
        if on_backend::<Cube, NoCheckpointing, D>(&input) {
            return recompute::<Cube, NoCheckpointing, D>(input, params, output, block, keep_input);
        }
    }
    panic!(
        "block recomputation has no implementation for the device {:?} (Flex has one, and \
         CubeCL with qlora-fused's `cube` feature; a device with Burn's `Balanced` strategy has \
         none: the recomputation would mix strategies)",
        input.device()
    )
}

/// `DispatchTensor` ↔ `B`'s primitive, for a backend the dispatch layer knows.
pub(crate) fn into_backend_float<B: burn::backend::Backend>(
    t: DispatchTensor,
) -> burn::backend::tensor::FloatTensor<B>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    <DispatchTensor as DispatchKindConversion<B>>::try_into_backend(t)
        .expect("a gradient on the block's backend")
        .float()
}
