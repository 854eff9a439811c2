//! `DropoutOps` for `Autodiff<B, C>`: the backward node keeps the seed and the probability
//! only, and draws the mask again through the inner backend.

use burn::backend::{
    AutodiffBackend,
    autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};

use super::register;
use crate::ops::DropoutOps;

#[derive(Debug)]
struct DropoutBackward;

impl<B: DropoutOps> Backward<B, 1> for DropoutBackward {
    type State = (f32, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents.map(|p| p.map(|n| n.id));
        let (prob, seed) = ops.state;
        if parent.is_some() {
            register::<B>(grads, parent, B::seeded_dropout_backward(g, prob, seed));
        }
    }
}

impl<B: DropoutOps, C: CheckpointStrategy> DropoutOps for Autodiff<B, C> {
    fn seeded_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::seeded_dropout(x.into_primitive(), prob, seed);
                prep.finish((prob, seed), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::seeded_dropout(x.into_primitive(), prob, seed))
            }
        }
    }

    fn seeded_dropout_backward(dy: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        // A value, not part of the graph (no second-order gradients).
        <Self as AutodiffBackend>::from_inner(B::seeded_dropout_backward(
            dy.into_primitive(),
            prob,
            seed,
        ))
    }
}
