//! `LinearCrossEntropyOps` for `Autodiff<B, C>`: the forward pass runs the fused op of the inner
//! backend, which returns the losses with the input gradient of every row's loss; that
//! `[n, h]` gradient is the backward state (no logits are kept), scaled row by row by the
//! upstream gradient. A trainable head gets its gradient from a second, recomputing pass.

use burn::backend::{
    AutodiffBackend, Shape,
    autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{FloatTensor, IntTensor},
};

use crate::ops::{LinearCrossEntropyOps, dims2};

/// The backward state: the input gradient per unit loss, and what a head gradient needs.
type State<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
);

#[derive(Debug)]
struct LinearCrossEntropyBackward;

impl<B: LinearCrossEntropyOps> Backward<B, 2> for LinearCrossEntropyBackward {
    type State = State<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (dx_unit, x, w, targets, weights) = ops.state;
        let [n, h] = dims2(&dx_unit, "dx");
        if let Some(node) = node_x {
            let g = B::float_expand(
                B::float_reshape(g.clone(), Shape::new([n, 1])),
                Shape::new([n, h]),
            );
            grads.register::<B>(node.id, B::float_mul(dx_unit, g));
        }
        if let Some(node) = node_w {
            let scaled = B::float_mul(weights, g);
            grads.register::<B>(
                node.id,
                B::linear_cross_entropy_weight_grad(x, w, targets, scaled),
            );
        }
    }
}

impl<B: LinearCrossEntropyOps, C: CheckpointStrategy> LinearCrossEntropyOps for Autodiff<B, C> {
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let weights = weights.into_primitive();
        match LinearCrossEntropyBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), w.primitive().clone());
                let (loss, dx) = B::linear_cross_entropy_with_grad(
                    xp.clone(),
                    wp.clone(),
                    targets.clone(),
                    weights.clone(),
                );
                prep.finish((dx, xp, wp, targets, weights), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_cross_entropy(
                x.into_primitive(),
                w.into_primitive(),
                targets,
                weights,
            )),
        }
    }

    fn linear_cross_entropy_with_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Values, not part of the graph: the second is already a gradient.
        let (loss, dx) = B::linear_cross_entropy_with_grad(
            x.into_primitive(),
            w.into_primitive(),
            targets,
            weights.into_primitive(),
        );
        (
            <Self as AutodiffBackend>::from_inner(loss),
            <Self as AutodiffBackend>::from_inner(dx),
        )
    }

    fn linear_cross_entropy_weight_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::linear_cross_entropy_weight_grad(
            x.into_primitive(),
            w.into_primitive(),
            targets,
            weights.into_primitive(),
        ))
    }
}
