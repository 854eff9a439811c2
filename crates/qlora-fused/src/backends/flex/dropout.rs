//! `DropoutOps` for Flex: the counter-based host kernel of `host::dropout`.

use burn::backend::{Flex, tensor::FloatTensor};

use super::{dims, f32s, slice, tensor};
use crate::host::dropout;
use crate::ops::DropoutOps;

impl DropoutOps for Flex {
    fn seeded_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        let (shape, dtype) = (dims(&x), x.dtype());
        let xf = f32s(x);
        tensor(
            dropout::seeded_dropout(slice(&xf), prob, seed),
            shape,
            dtype,
        )
    }

    fn seeded_dropout_backward(dy: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        // The mask is its own adjoint.
        Self::seeded_dropout(dy, prob, seed)
    }
}
