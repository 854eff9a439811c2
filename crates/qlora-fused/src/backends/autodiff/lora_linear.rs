//! `LoraLinearOps` for `Autodiff<B, C>`: one node whose parents are `x`, `A` and `B`, and whose
//! state is the packed weight, `x` and the rank-`r` intermediate `h` (no dropped-out copy of the
//! input and no `[tokens, out]` buffer; the mask is drawn again from its seed). The backward pass
//! is one call of the inner backend's `nf4_lora_linear_backward`, which skips the base's input
//! gradient when `x` is not tracked.

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
use qlora_backend::Nf4Primitive;

use super::register;
use crate::ops::LoraLinearOps;

/// What the backward pass reads: the weight, `x`, `h`, `A`, `B` and `(scaling, dropout, seed)`.
#[derive(Debug, Clone)]
struct State<B: burn::backend::Backend> {
    w: Nf4Primitive<B>,
    x: FloatTensor<B>,
    h: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    settings: (f32, f32, u64),
}

#[derive(Debug)]
struct LoraLinearBackward;

impl<B: LoraLinearOps> Backward<B, 3> for LoraLinearBackward {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pa, pb] = ops.parents.map(|p| p.map(|n| n.id));
        let dy = grads.consume::<B>(&ops.node);
        let State {
            w,
            x,
            h,
            a,
            b,
            settings: (scaling, dropout, seed),
        } = ops.state;
        let (dx, da, db) =
            B::nf4_lora_linear_backward(dy, w, x, h, a, b, scaling, dropout, seed, px.is_some());
        register::<B>(grads, px, dx);
        register::<B>(grads, pa, da);
        register::<B>(grads, pb, db);
    }
}

impl<B: LoraLinearOps, C: CheckpointStrategy> LoraLinearOps for Autodiff<B, C> {
    fn nf4_lora_linear(
        x: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
        lora_a: FloatTensor<Self>,
        lora_b: FloatTensor<Self>,
        scaling: f32,
        dropout: f32,
        seed: u64,
        base: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let w = w.into_inner();
        let prep = LoraLinearBackward
            .prepare::<C>([x.node(), lora_a.node(), lora_b.node()])
            .compute_bound()
            .stateful();
        let (x, a, b) = (
            x.into_primitive(),
            lora_a.into_primitive(),
            lora_b.into_primitive(),
        );
        let (y, h) = B::nf4_lora_linear(
            x.clone(),
            w.clone(),
            a.clone(),
            b.clone(),
            scaling,
            dropout,
            seed,
            base,
        );
        let y = match prep {
            OpsKind::Tracked(prep) => {
                let settings = (scaling, dropout, seed);
                let h = h.clone();
                prep.finish(
                    State {
                        w,
                        x,
                        h,
                        a,
                        b,
                        settings,
                    },
                    y,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, <Self as AutodiffBackend>::from_inner(h))
    }

    fn nf4_lora_linear_backward(
        dy: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
        x: FloatTensor<Self>,
        h: FloatTensor<Self>,
        lora_a: FloatTensor<Self>,
        lora_b: FloatTensor<Self>,
        scaling: f32,
        dropout: f32,
        seed: u64,
        input_grad: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Values, not part of the graph (no second-order gradients).
        let (dx, da, db) = B::nf4_lora_linear_backward(
            dy.into_primitive(),
            w.into_inner(),
            x.into_primitive(),
            h.into_primitive(),
            lora_a.into_primitive(),
            lora_b.into_primitive(),
            scaling,
            dropout,
            seed,
            input_grad,
        );
        let value = |t| <Self as AutodiffBackend>::from_inner(t);
        (value(dx), value(da), value(db))
    }
}
