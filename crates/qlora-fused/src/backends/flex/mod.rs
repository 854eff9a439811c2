//! The ops on Flex, Burn's pure-Rust CPU backend: the `host` kernels on the tensors' buffers,
//! computed in f32, results in the inputs' float type.

mod attention;
mod block;
mod cross_entropy;
mod dropout;
mod lora_linear;

use burn::backend::{
    DType, Flex, FloatDType, IntDType, TensorData, TensorMetadata,
    flex::FlexTensor,
    ops::{FloatTensorOps, IntTensorOps},
};

/// A contiguous f32 copy of `t` (no copy when it already is one).
fn f32s(t: FlexTensor) -> FlexTensor {
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

/// A contiguous i64 copy of `t` (no copy when it already is one).
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

/// The values of a tensor made by [`f32s`].
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// The dimensions of `t`.
fn dims(t: &FlexTensor) -> Vec<usize> {
    t.shape().as_slice().to_vec()
}

/// `values` as a tensor of `shape` in the float type `dtype` (the kernels compute in f32).
fn tensor(values: Vec<f32>, shape: Vec<usize>, dtype: DType) -> FlexTensor {
    let t = FlexTensor::from_data(TensorData::new(values, shape));
    match dtype {
        DType::F64 => <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::F64),
        DType::F16 => <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::F16),
        DType::BF16 => <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::BF16),
        _ => t,
    }
}
