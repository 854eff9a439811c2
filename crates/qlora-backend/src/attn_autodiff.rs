//! `CausalAttentionOps` for `Autodiff<B, C>`: the forward pass runs the inner backend's op and
//! keeps only `Q`, `K`, `V`; the backward pass is the inner backend's
//! `causal_attention_backward`, which recomputes the probabilities.

use burn::backend::{
    AutodiffBackend, TensorMetadata,
    autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};

use crate::attn_ops::CausalAttentionOps;
use crate::block_autodiff::register_parts;

#[derive(Debug)]
struct CausalAttentionBackward;

impl<B: CausalAttentionOps> Backward<B, 3> for CausalAttentionBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let g = grads.consume::<B>(&ops.node);
        let (q, k, v, scale) = ops.state;
        let shapes = [q.shape(), k.shape(), v.shape()];
        let flat = B::causal_attention_backward(q, k, v, g, scale);
        let parents = ops.parents.map(|p| p.map(|n| n.id));
        register_parts::<B, 3>(grads, parents, flat, shapes);
    }
}

impl<B: CausalAttentionOps, C: CheckpointStrategy> CausalAttentionOps for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        match CausalAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (qp, kp, vp) = (
                    q.primitive().clone(),
                    k.primitive().clone(),
                    v.primitive().clone(),
                );
                let out = B::causal_attention(qp.clone(), kp.clone(), vp.clone(), scale);
                prep.finish((qp, kp, vp, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                scale,
            )),
        }
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        // A value, not part of the graph (second-order gradients are not supported).
        <Self as AutodiffBackend>::from_inner(B::causal_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            dout.into_primitive(),
            scale,
        ))
    }
}
