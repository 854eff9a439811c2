//! `CausalAttentionOps` for Flex: the host kernels of [`crate::attn_cpu`] on the tensors'
//! buffers.

use burn::backend::{
    DType, Flex, FloatDType, TensorData, flex::FlexTensor, ops::FloatTensorOps, tensor::FloatTensor,
};

use crate::attn_cpu::{attention_backward, attention_forward};
use crate::attn_ops::{CausalAttentionOps, dims};
use crate::ce_flex::f32s;

impl CausalAttentionOps for Flex {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let s = dims(&q, &k, &v, scale);
        let dtype = q.dtype();
        let (q, k, v) = (f32s(q), f32s(k), f32s(v));
        let out = attention_forward(&s, slice(&q), slice(&k), slice(&v));
        as_dtype(
            FlexTensor::from_data(TensorData::new(out, [s.b, s.h, s.tq, s.dv])),
            dtype,
        )
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let s = dims(&q, &k, &v, scale);
        let dtype = q.dtype();
        let (q, k, v, dout) = (f32s(q), f32s(k), f32s(v), f32s(dout));
        let (mut dq, dk, dv) =
            attention_backward(&s, slice(&q), slice(&k), slice(&v), slice(&dout));
        dq.extend_from_slice(&dk);
        dq.extend_from_slice(&dv);
        let n = dq.len();
        as_dtype(FlexTensor::from_data(TensorData::new(dq, [n])), dtype)
    }
}

pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// The kernels compute in f32; a result goes back to its inputs' float type.
pub(crate) fn as_dtype(t: FlexTensor, dtype: DType) -> FlexTensor {
    match dtype {
        DType::F64 => <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::F64),
        DType::F16 => <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::F16),
        DType::BF16 => <Flex as FloatTensorOps<Flex>>::float_cast(t, FloatDType::BF16),
        _ => t,
    }
}
