//! `BlockOps` for `Autodiff<B, C>`: each forward op checkpoints its inputs (not its output) and
//! its backward pass is one call of the inner backend's fused backward op.

use burn::backend::{
    AutodiffBackend,
    autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};

use super::register;
use crate::ops::BlockOps;

#[derive(Debug)]
struct RmsNormBackward;

impl<B: BlockOps> Backward<B, 2> for RmsNormBackward {
    type State = (NodeId, NodeId, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let (x, w, eps) = ops.state;
        let [x, w] = [x, w].map(|id| ck.retrieve_node_output::<FloatTensor<B>>(id));
        let (dx, dw) = B::rms_norm_backward(x, w, g, eps);
        let [px, pw] = ops.parents.map(|p| p.map(|n| n.id));
        register::<B>(grads, px, dx);
        register::<B>(grads, pw, dw);
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl<B: BlockOps> Backward<B, 2> for SwigluBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let [gate, up] = [gate, up].map(|id| ck.retrieve_node_output::<FloatTensor<B>>(id));
        let (dgate, dup) = B::swiglu_backward(gate, up, g);
        let [pg, pu] = ops.parents.map(|p| p.map(|n| n.id));
        register::<B>(grads, pg, dgate);
        register::<B>(grads, pu, dup);
    }
}

#[derive(Debug)]
struct GegluTanhBackward;

impl<B: BlockOps> Backward<B, 2> for GegluTanhBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let [gate, up] = [gate, up].map(|id| ck.retrieve_node_output::<FloatTensor<B>>(id));
        let (dgate, dup) = B::geglu_tanh_backward(gate, up, g);
        let [pg, pu] = ops.parents.map(|p| p.map(|n| n.id));
        register::<B>(grads, pg, dgate);
        register::<B>(grads, pu, dup);
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<B: BlockOps> Backward<B, 1> for RopeBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents.map(|p| p.map(|n| n.id));
        let (cos, sin, transpose) = ops.state;
        if parent.is_some() {
            // The rotation's adjoint, or the adjoint's: the rotation itself.
            register::<B>(grads, parent, B::rope(g, cos, sin, !transpose));
        }
    }
}

impl<B: BlockOps, C: CheckpointStrategy> BlockOps for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        match RmsNormBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&w), eps);
                let y = B::rms_norm(x.into_primitive(), w.into_primitive(), eps);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::rms_norm(x.into_primitive(), w.into_primitive(), eps))
            }
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Values, not part of the graph (no second-order gradients).
        let (dx, dw) = B::rms_norm_backward(
            x.into_primitive(),
            w.into_primitive(),
            dy.into_primitive(),
            eps,
        );
        (
            <Self as AutodiffBackend>::from_inner(dx),
            <Self as AutodiffBackend>::from_inner(dw),
        )
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&gate), prep.checkpoint(&up));
                let y = B::swiglu(gate.into_primitive(), up.into_primitive());
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::swiglu(gate.into_primitive(), up.into_primitive()))
            }
        }
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dgate, dup) = B::swiglu_backward(
            gate.into_primitive(),
            up.into_primitive(),
            dy.into_primitive(),
        );
        (
            <Self as AutodiffBackend>::from_inner(dgate),
            <Self as AutodiffBackend>::from_inner(dup),
        )
    }

    fn geglu_tanh(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match GegluTanhBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&gate), prep.checkpoint(&up));
                let y = B::geglu_tanh(gate.into_primitive(), up.into_primitive());
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::geglu_tanh(gate.into_primitive(), up.into_primitive()))
            }
        }
    }

    fn geglu_tanh_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dgate, dup) = B::geglu_tanh_backward(
            gate.into_primitive(),
            up.into_primitive(),
            dy.into_primitive(),
        );
        (
            <Self as AutodiffBackend>::from_inner(dgate),
            <Self as AutodiffBackend>::from_inner(dup),
        )
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        // The tables are constants: only `x` is a parent.
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RopeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::rope(x.into_primitive(), cos.clone(), sin.clone(), transpose);
                prep.finish((cos, sin, transpose), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::rope(x.into_primitive(), cos, sin, transpose))
            }
        }
    }
}
