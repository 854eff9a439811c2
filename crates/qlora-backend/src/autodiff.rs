//! `Nf4Ops` for `Autodiff<B, C>`: the NF4 weight is a constant (int words, never tracked), and
//! the backward of `nf4_linear` keeps **only the packed weight** as its state: `dX = dY · W`
//! dequantizes tiles of `W` again during the backward pass. Neither a dense `W` nor the input
//! `x` is saved, which is the memory property of QLoRA's frozen base.

use burn::backend::{
    AutodiffBackend, Backend,
    autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};

use crate::{Nf4Ops, Nf4Primitive};

impl<B: Backend, C: CheckpointStrategy> Nf4Primitive<Autodiff<B, C>> {
    /// The weight on the inner backend: under autodiff the int tensors are the inner
    /// backend's own primitives, so this is a field-wise move (for `Autodiff` impls of other
    /// op traits that take the weight, such as `qlora-fused`'s).
    pub fn into_inner(self) -> Nf4Primitive<B> {
        Nf4Primitive {
            packed: self.packed,
            scales: self.scales,
            layout: self.layout,
        }
    }
}

/// Backward of `y = x · Wᵀ` (and, with `TRANSPOSED`, of `dx = dy · W`): the state is the
/// packed weight alone.
#[derive(Debug)]
struct Nf4LinearBackward<const TRANSPOSED: bool>;

impl<B: Nf4Ops, const TRANSPOSED: bool> Backward<B, 1> for Nf4LinearBackward<TRANSPOSED> {
    type State = Nf4Primitive<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            let input_grad = if TRANSPOSED {
                B::nf4_linear(grad, ops.state)
            } else {
                B::nf4_linear_backward_input(grad, ops.state)
            };
            grads.register::<B>(node.id, input_grad);
        }
    }
}

fn tracked<B: Nf4Ops, C: CheckpointStrategy, const TRANSPOSED: bool>(
    x: FloatTensor<Autodiff<B, C>>,
    w: Nf4Primitive<B>,
    forward: fn(FloatTensor<B>, Nf4Primitive<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match Nf4LinearBackward::<TRANSPOSED>
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(x.primitive().clone(), w.clone());
            prep.finish(w, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive(), w)),
    }
}

impl<B: Nf4Ops, C: CheckpointStrategy> Nf4Ops for Autodiff<B, C> {
    fn nf4_dequantize(w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        // The weight is frozen: its dense form is a constant of the graph.
        <Self as AutodiffBackend>::from_inner(B::nf4_dequantize(w.into_inner()))
    }

    fn nf4_linear(x: FloatTensor<Self>, w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        tracked::<B, C, false>(x, w.into_inner(), B::nf4_linear)
    }

    fn nf4_linear_output_unused(x: FloatTensor<Self>, w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        tracked::<B, C, false>(x, w.into_inner(), B::nf4_linear_output_unused)
    }

    fn nf4_linear_backward_input(
        dy: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
    ) -> FloatTensor<Self> {
        tracked::<B, C, true>(dy, w.into_inner(), B::nf4_linear_backward_input)
    }
}
