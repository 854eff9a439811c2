//! `LinearCrossEntropyOps` for Flex: the host kernel of [`crate::ce_cpu`] on the tensors'
//! buffers.

use burn::backend::{
    DType, Flex, FloatDType, IntDType, TensorData,
    flex::FlexTensor,
    ops::{FloatTensorOps, IntTensorOps},
    tensor::{FloatTensor, IntTensor},
};

use crate::ce_cpu::{CeInputs, linear_cross_entropy, linear_cross_entropy_weight_grad};
use crate::ce_ops::{LinearCrossEntropyOps, dims2};

/// A contiguous f32 copy of `t` (no copy when it already is one).
pub(crate) fn f32s(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::F32)
    };
    if t.is_contiguous() && t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn i64s(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::I64 {
        t
    } else {
        <Flex as IntTensorOps<Flex>>::int_cast(t, IntDType::I64)
    };
    if t.is_contiguous() && t.as_slice::<i64>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn run(
    x: FloatTensor<Flex>,
    w: FloatTensor<Flex>,
    targets: IntTensor<Flex>,
    weights: FloatTensor<Flex>,
    with_grad: bool,
) -> FloatTensor<Flex> {
    let ([n, h], [v, hw]) = (dims2(&x, "x"), dims2(&w, "w"));
    assert_eq!(
        h, hw,
        "linear_cross_entropy: x has {h} features, w has {hw}"
    );
    let (x, w, t, a) = (f32s(x), f32s(w), i64s(targets), f32s(weights));
    let out = linear_cross_entropy(
        &CeInputs {
            x: x.as_slice::<f32>().expect("f32"),
            w: w.as_slice::<f32>().expect("f32"),
            targets: t.as_slice::<i64>().expect("i64"),
            weights: a.as_slice::<f32>().expect("f32"),
            h,
            v,
        },
        with_grad,
    );
    let shape = if with_grad { vec![n, h + 1] } else { vec![n] };
    FlexTensor::from_data(TensorData::new(out, shape))
}

impl LinearCrossEntropyOps for Flex {
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        run(x, w, targets, weights, false)
    }

    fn linear_cross_entropy_fused(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        run(x, w, targets, weights, true)
    }

    fn linear_cross_entropy_weight_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let ([_, h], [v, hw]) = (dims2(&x, "x"), dims2(&w, "w"));
        assert_eq!(
            h, hw,
            "linear_cross_entropy: x has {h} features, w has {hw}"
        );
        let (x, w, t, a) = (f32s(x), f32s(w), i64s(targets), f32s(weights));
        let dw = linear_cross_entropy_weight_grad(&CeInputs {
            x: x.as_slice::<f32>().expect("f32"),
            w: w.as_slice::<f32>().expect("f32"),
            targets: t.as_slice::<i64>().expect("i64"),
            weights: a.as_slice::<f32>().expect("f32"),
            h,
            v,
        });
        FlexTensor::from_data(TensorData::new(dw, vec![v, h]))
    }
}
