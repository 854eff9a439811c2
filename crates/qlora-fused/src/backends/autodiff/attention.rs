//! `CausalAttentionOps` for `Autodiff<B, C>`: the forward pass runs the inner backend's op and
//! checkpoints only `Q`, `K`, `V`; the backward pass is the inner backend's
//! `causal_attention_backward`, which recomputes the probabilities.

use burn::backend::{
    AutodiffBackend,
    autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{FloatTensor, IntTensor},
};

use super::register;
use crate::ops::CausalAttentionOps;

#[derive(Debug)]
struct CausalAttentionBackward;

impl<B: CausalAttentionOps> Backward<B, 3> for CausalAttentionBackward {
    type State = (NodeId, NodeId, NodeId, f32, Option<usize>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let g = grads.consume::<B>(&ops.node);
        let (q, k, v, scale, window) = ops.state;
        let [q, k, v] = [q, k, v].map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        let (dq, dk, dv) = B::causal_attention_backward(q, k, v, g, scale, window);
        let [pq, pk, pv] = ops.parents.map(|p| p.map(|n| n.id));
        register::<B>(grads, pq, dq);
        register::<B>(grads, pk, dk);
        register::<B>(grads, pv, dv);
    }
}

#[derive(Debug)]
struct SegmentedAttentionBackward;

impl<B: CausalAttentionOps> Backward<B, 3> for SegmentedAttentionBackward {
    type State = (NodeId, NodeId, NodeId, IntTensor<B>, f32, Option<usize>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let g = grads.consume::<B>(&ops.node);
        let (q, k, v, starts, scale, window) = ops.state;
        let [q, k, v] = [q, k, v].map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        let (dq, dk, dv) =
            B::causal_attention_segmented_backward(q, k, v, starts, g, scale, window);
        let [pq, pk, pv] = ops.parents.map(|p| p.map(|n| n.id));
        register::<B>(grads, pq, dq);
        register::<B>(grads, pk, dk);
        register::<B>(grads, pv, dv);
    }
}

impl<B: CausalAttentionOps, C: CheckpointStrategy> CausalAttentionOps for Autodiff<B, C> {
    fn causal_attention_segmented(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        match SegmentedAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&q),
                    prep.checkpoint(&k),
                    prep.checkpoint(&v),
                    starts.clone(),
                    scale,
                    window,
                );
                let out = B::causal_attention_segmented(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    starts,
                    scale,
                    window,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_attention_segmented(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                starts,
                scale,
                window,
            )),
        }
    }

    fn causal_attention_segmented_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = B::causal_attention_segmented_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            starts,
            dout.into_primitive(),
            scale,
            window,
        );
        (
            <Self as AutodiffBackend>::from_inner(dq),
            <Self as AutodiffBackend>::from_inner(dk),
            <Self as AutodiffBackend>::from_inner(dv),
        )
    }

    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        match CausalAttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                // The inputs go through the checkpointer, as Burn's own ops keep theirs: under
                // a recomputing strategy they are recomputed rather than held.
                let state = (
                    prep.checkpoint(&q),
                    prep.checkpoint(&k),
                    prep.checkpoint(&v),
                    scale,
                    window,
                );
                let out = B::causal_attention(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    scale,
                    window,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                scale,
                window,
            )),
        }
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Values, not part of the graph (second-order gradients are not supported).
        let (dq, dk, dv) = B::causal_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            dout.into_primitive(),
            scale,
            window,
        );
        (
            <Self as AutodiffBackend>::from_inner(dq),
            <Self as AutodiffBackend>::from_inner(dk),
            <Self as AutodiffBackend>::from_inner(dv),
        )
    }
}
