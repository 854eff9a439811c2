//! `CausalAttentionOps` for `Autodiff<B, C>`: the forward pass runs the inner backend's op and
//! checkpoints only `Q`, `K`, `V` (and a padding-free batch's segment starts, which are not
//! differentiated); the backward pass is the inner backend's backward op, which recomputes the
//! probabilities.

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

/// `(dq, dk, dv)`.
type Grads3<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

#[derive(Debug)]
struct CausalAttentionBackward;

impl<B: CausalAttentionOps> Backward<B, 3> for CausalAttentionBackward {
    type State = (
        NodeId,
        NodeId,
        NodeId,
        Option<IntTensor<B>>,
        f32,
        Option<usize>,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let g = grads.consume::<B>(&ops.node);
        let (q, k, v, starts, scale, window) = ops.state;
        let [q, k, v] = [q, k, v].map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        let (dq, dk, dv) = inner_backward::<B>(q, k, v, starts, g, scale, window);
        let [pq, pk, pv] = ops.parents.map(|p| p.map(|n| n.id));
        register::<B>(grads, pq, dq);
        register::<B>(grads, pk, dk);
        register::<B>(grads, pv, dv);
    }
}

/// The inner backend's forward op, segmented or not.
fn inner_forward<B: CausalAttentionOps>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    starts: Option<IntTensor<B>>,
    scale: f32,
    window: Option<usize>,
) -> FloatTensor<B> {
    match starts {
        Some(starts) => B::causal_attention_segmented(q, k, v, starts, scale, window),
        None => B::causal_attention(q, k, v, scale, window),
    }
}

/// The inner backend's backward op, segmented or not.
fn inner_backward<B: CausalAttentionOps>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    starts: Option<IntTensor<B>>,
    dout: FloatTensor<B>,
    scale: f32,
    window: Option<usize>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    match starts {
        Some(starts) => {
            B::causal_attention_segmented_backward(q, k, v, starts, dout, scale, window)
        }
        None => B::causal_attention_backward(q, k, v, dout, scale, window),
    }
}

/// The tracked forward pass of either op.
fn forward<B: CausalAttentionOps, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    starts: Option<IntTensor<B>>,
    scale: f32,
    window: Option<usize>,
) -> FloatTensor<Autodiff<B, C>> {
    match CausalAttentionBackward
        .prepare::<C>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            // The inputs go through the checkpointer, as Burn's own ops keep theirs: under a
            // recomputing strategy they are recomputed rather than held.
            let state = (
                prep.checkpoint(&q),
                prep.checkpoint(&k),
                prep.checkpoint(&v),
                starts.clone(),
                scale,
                window,
            );
            let out = inner_forward::<B>(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                starts,
                scale,
                window,
            );
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(inner_forward::<B>(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            starts,
            scale,
            window,
        )),
    }
}

/// The backward op of either, as values (no second-order gradients).
fn backward<B: CausalAttentionOps, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    starts: Option<IntTensor<B>>,
    dout: FloatTensor<Autodiff<B, C>>,
    scale: f32,
    window: Option<usize>,
) -> Grads3<Autodiff<B, C>> {
    let (dq, dk, dv) = inner_backward::<B>(
        q.into_primitive(),
        k.into_primitive(),
        v.into_primitive(),
        starts,
        dout.into_primitive(),
        scale,
        window,
    );
    (
        <Autodiff<B, C> as AutodiffBackend>::from_inner(dq),
        <Autodiff<B, C> as AutodiffBackend>::from_inner(dk),
        <Autodiff<B, C> as AutodiffBackend>::from_inner(dv),
    )
}

impl<B: CausalAttentionOps, C: CheckpointStrategy> CausalAttentionOps for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        forward::<B, C>(q, k, v, None, scale, window)
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        backward::<B, C>(q, k, v, None, dout, scale, window)
    }

    fn causal_attention_segmented(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        forward::<B, C>(q, k, v, Some(starts), scale, window)
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
        backward::<B, C>(q, k, v, Some(starts), dout, scale, window)
    }
}
