//! `LinearCrossEntropyOps` for Flex: the host kernels of `host::cross_entropy`. Losses are f32
//! whatever the inputs' float type (as HF upcasts logits for the loss); gradients are in the
//! type of what they are the gradient of.

use burn::backend::{
    DType, Flex,
    tensor::{FloatTensor, IntTensor},
};

use super::{f32s, i64s, slice, tensor};
use crate::host::cross_entropy::{
    CeInputs, linear_cross_entropy, linear_cross_entropy_weight_grad,
    linear_cross_entropy_with_grad,
};
use crate::ops::{LinearCrossEntropyOps, dims2};

/// Runs `kernel` on the f32/i64 host values of the operands, `[n, h]`, `[v, h]`, `[n]`, `[n]`.
///
/// # Panics
/// If the feature counts of `x` and `w` differ.
fn with_inputs<T>(
    x: FloatTensor<Flex>,
    w: FloatTensor<Flex>,
    targets: IntTensor<Flex>,
    weights: FloatTensor<Flex>,
    kernel: impl FnOnce(&CeInputs<'_>) -> T,
) -> T {
    let ([_, h], [v, hw]) = (dims2(&x, "x"), dims2(&w, "w"));
    assert_eq!(
        h, hw,
        "linear_cross_entropy: x has {h} features, w has {hw}"
    );
    let (x, w, t, a) = (f32s(x), f32s(w), i64s(targets), f32s(weights));
    kernel(&CeInputs {
        x: slice(&x),
        w: slice(&w),
        targets: t.as_slice::<i64>().expect("a contiguous i64 tensor"),
        weights: slice(&a),
        h,
        v,
    })
}

impl LinearCrossEntropyOps for Flex {
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [n, _] = dims2(&x, "x");
        let loss = with_inputs(x, w, targets, weights, linear_cross_entropy);
        tensor(loss, vec![n], DType::F32)
    }

    fn linear_cross_entropy_with_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let ([n, h], dtype) = (dims2(&x, "x"), x.dtype());
        let (loss, dx) = with_inputs(x, w, targets, weights, linear_cross_entropy_with_grad);
        (
            tensor(loss, vec![n], DType::F32),
            tensor(dx, vec![n, h], dtype),
        )
    }

    fn linear_cross_entropy_weight_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let ([v, h], dtype) = (dims2(&w, "w"), w.dtype());
        let dw = with_inputs(x, w, targets, weights, linear_cross_entropy_weight_grad);
        tensor(dw, vec![v, h], dtype)
    }
}
