//! `BlockOps` for Flex: the host kernels of `host::block`.

use burn::backend::{Flex, tensor::FloatTensor};

use super::{dims, f32s, slice, tensor};
use crate::host::block;
use crate::ops::BlockOps;

impl BlockOps for Flex {
    fn rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let (shape, dtype) = (dims(&x), x.dtype());
        let (xf, wf) = (f32s(x), f32s(w));
        tensor(block::rms_norm(slice(&xf), slice(&wf), eps), shape, dtype)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (xs, ws, dtype) = (dims(&x), dims(&w), x.dtype());
        let (xf, wf, dyf) = (f32s(x), f32s(w), f32s(dy));
        let (dx, dw) = block::rms_norm_backward(slice(&xf), slice(&wf), slice(&dyf), eps);
        (tensor(dx, xs, dtype), tensor(dw, ws, dtype))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        gated(gate, up, block::swiglu)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        gated_backward(gate, up, dy, block::swiglu_backward)
    }

    fn geglu_tanh(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        gated(gate, up, block::geglu_tanh)
    }

    fn geglu_tanh_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        gated_backward(gate, up, dy, block::geglu_tanh_backward)
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let (shape, dtype) = (dims(&x), x.dtype());
        let d = *shape.last().expect("rope: a 4-D input");
        let w = *dims(&cos).last().expect("rope: 2-D tables");
        let (xf, c, s) = (f32s(x), f32s(cos), f32s(sin));
        let y = block::rope(slice(&xf), slice(&c), slice(&s), d, w, transpose);
        tensor(y, shape, dtype)
    }
}

/// A gated unit's forward host kernel on Flex tensors of one shape.
fn gated(
    gate: FloatTensor<Flex>,
    up: FloatTensor<Flex>,
    kernel: fn(&[f32], &[f32]) -> Vec<f32>,
) -> FloatTensor<Flex> {
    let (shape, dtype) = (dims(&gate), gate.dtype());
    let (g, u) = (f32s(gate), f32s(up));
    tensor(kernel(slice(&g), slice(&u)), shape, dtype)
}

/// A gated unit's backward host kernel on Flex tensors of one shape: `(dgate, dup)`.
#[allow(clippy::type_complexity)]
fn gated_backward(
    gate: FloatTensor<Flex>,
    up: FloatTensor<Flex>,
    dy: FloatTensor<Flex>,
    kernel: fn(&[f32], &[f32], &[f32]) -> (Vec<f32>, Vec<f32>),
) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
    let (shape, dtype) = (dims(&gate), gate.dtype());
    let (g, u, d) = (f32s(gate), f32s(up), f32s(dy));
    let (dg, du) = kernel(slice(&g), slice(&u), slice(&d));
    (tensor(dg, shape.clone(), dtype), tensor(du, shape, dtype))
}
