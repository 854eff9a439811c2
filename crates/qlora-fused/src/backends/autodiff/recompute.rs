//! The node of [`crate::ops::recompute_in_backward`] on `Autodiff<B, C>`: its state is the
//! block's input (the inner backend's tensor), the trained parameters' node ids and the block;
//! its backward pass asks the block for the gradients and registers them.

use std::fmt;
use std::sync::Arc;

use burn::backend::{
    Backend, DispatchKindConversion, DispatchTensor,
    autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};
use burn::tensor::Tensor;

use crate::ops::{RecomputeBlock, into_backend_float};

/// What the node keeps: the block's input, never its activations.
struct RecomputeState<B: Backend, const D: usize> {
    input: Option<FloatTensor<B>>,
    params: Arc<[NodeId]>,
    block: Arc<dyn RecomputeBlock<D>>,
}

impl<B: Backend, const D: usize> Clone for RecomputeState<B, D> {
    fn clone(&self) -> Self {
        Self {
            input: self.input.clone(),
            params: self.params.clone(),
            block: self.block.clone(),
        }
    }
}

impl<B: Backend, const D: usize> fmt::Debug for RecomputeState<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecomputeState")
            .field("params", &self.params.len())
            .finish()
    }
}

#[derive(Debug)]
struct RecomputeBackward<const D: usize>;

impl<B: Backend, const D: usize> Backward<B, 2> for RecomputeBackward<D>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    type State = RecomputeState<B, D>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let [input_node, _anchor] = ops.parents.map(|p| p.map(|n| n.id));
        let state = ops.state;
        let input = state.input.map(Tensor::<D>::from_primitive::<B>);
        let output_grad = Tensor::<D>::from_primitive::<B>(output_grad);
        let out = state
            .block
            .recompute(input, input_node.is_some(), output_grad);
        if let (Some(id), Some(grad)) = (input_node, out.input) {
            grads.register::<B>(id, into_backend_float::<B>(grad.into_dispatch()));
        }
        assert_eq!(
            out.params.len(),
            state.params.len(),
            "the recomputed block returned {} parameter gradients for {} parameters",
            out.params.len(),
            state.params.len()
        );
        for (id, grad) in state.params.iter().zip(out.params) {
            if let Some(grad) = grad {
                grads.register::<B>(*id, into_backend_float::<B>(grad));
            }
        }
    }
}

/// Whether `input` is an `Autodiff<B, C>` tensor.
pub(crate) fn on_backend<B: Backend, C: CheckpointStrategy, const D: usize>(
    input: &Tensor<D>,
) -> bool
where
    DispatchTensor: DispatchKindConversion<Autodiff<B, C>>,
{
    input.clone().try_into_primitive::<Autodiff<B, C>>().is_ok()
}

/// [`crate::ops::recompute_in_backward`] on `Autodiff<B, C>` (see [`on_backend`]).
pub(crate) fn recompute<B: Backend, C: CheckpointStrategy, const D: usize>(
    input: Tensor<D>,
    params: Vec<DispatchTensor>,
    output: Tensor<D>,
    block: Arc<dyn RecomputeBlock<D>>,
    keep_input: bool,
) -> Tensor<D>
where
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
{
    let input_ad = input
        .try_into_primitive::<Autodiff<B, C>>()
        .expect("checked by on_backend");
    let output = output
        .try_into_primitive::<Autodiff<B, C>>()
        .expect("the block's output on its input's backend")
        .into_primitive();
    let params: Vec<FloatTensor<Autodiff<B, C>>> = params
        .into_iter()
        .map(into_backend_float::<Autodiff<B, C>>)
        .collect();
    let ids: Arc<[NodeId]> = params.iter().map(|p| p.id()).collect();
    // An untracked stand-in where the block trains nothing: a parent that is never tracked.
    let anchor = params
        .first()
        .cloned()
        .unwrap_or_else(|| FloatTensor::<Autodiff<B, C>>::new(input_ad.primitive().clone()));
    match RecomputeBackward::<D>
        .prepare::<C>([input_ad.node(), anchor.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = RecomputeState {
                input: keep_input.then(|| input_ad.into_primitive()),
                params: ids,
                block,
            };
            Tensor::from_primitive::<Autodiff<B, C>>(prep.finish(state, output))
        }
        OpsKind::UnTracked(prep) => Tensor::from_primitive::<Autodiff<B, C>>(prep.finish(output)),
    }
}
