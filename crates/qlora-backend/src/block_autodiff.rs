//! `BlockOps` for `Autodiff<B, C>`: each forward op checkpoints its inputs (not its output; a
//! recomputing strategy recomputes them rather than holding them, as for Burn's own ops) and
//! its backward pass is one call of the inner backend's fused backward op.

use burn::backend::{
    AutodiffBackend, Shape, TensorMetadata,
    autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};

use crate::block_ops::BlockOps;

/// Registers consecutive parts of a flat gradient for the parents that track one.
pub(crate) fn register_parts<B: burn::backend::Backend, const N: usize>(
    grads: &mut Gradients,
    parents: [Option<NodeId>; N],
    flat: FloatTensor<B>,
    shapes: [Shape; N],
) {
    let mut start = 0;
    for (node, shape) in parents.into_iter().zip(shapes) {
        let n = shape.num_elements();
        if let Some(id) = node {
            let part = B::float_slice(flat.clone(), &[(start..start + n).into()]);
            grads.register::<B>(id, B::float_reshape(part, shape));
        }
        start += n;
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: BlockOps> Backward<B, 2> for RmsNormBackward {
    type State = (NodeId, NodeId, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ck: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let (x, w, eps) = ops.state;
        let [x, w] = [x, w].map(|id| ck.retrieve_node_output::<FloatTensor<B>>(id));
        let shapes = [x.shape(), w.shape()];
        let flat = B::rms_norm_backward(x, w, g, eps);
        register_parts::<B, 2>(grads, ops.parents.map(|p| p.map(|n| n.id)), flat, shapes);
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
        let shapes = [gate.shape(), up.shape()];
        let flat = B::swiglu_backward(gate, up, g);
        register_parts::<B, 2>(grads, ops.parents.map(|p| p.map(|n| n.id)), flat, shapes);
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<B: BlockOps> Backward<B, 1> for RopeBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [node] = ops.parents;
        let (cos, sin, transpose) = ops.state;
        if let Some(node) = node {
            // The rotation's adjoint, or the adjoint's: the rotation itself.
            grads.register::<B>(node.id, B::rope(g, cos, sin, !transpose));
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
    ) -> FloatTensor<Self> {
        // A value, not part of the graph (no second-order gradients).
        <Self as AutodiffBackend>::from_inner(B::rms_norm_backward(
            x.into_primitive(),
            w.into_primitive(),
            dy.into_primitive(),
            eps,
        ))
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
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::swiglu_backward(
            gate.into_primitive(),
            up.into_primitive(),
            dy.into_primitive(),
        ))
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
