//! The ops on `Autodiff<B, C>`: each forward op checkpoints its inputs (a recomputing strategy
//! recomputes them rather than holding them, as for Burn's own ops) and its backward node is
//! one call of the inner backend's backward op.

mod attention;
mod block;
mod cross_entropy;
mod dropout;
mod lora_linear;
mod recompute;

pub(crate) use recompute::{on_backend, recompute};

use burn::backend::{
    Backend,
    autodiff::{NodeId, grads::Gradients},
    tensor::FloatTensor,
};

/// Registers `grad` for `parent` where that parent tracks a gradient.
fn register<B: Backend>(grads: &mut Gradients, parent: Option<NodeId>, grad: FloatTensor<B>) {
    if let Some(id) = parent {
        grads.register::<B>(id, grad);
    }
}
