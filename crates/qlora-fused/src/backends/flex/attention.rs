//! `CausalAttentionOps` for Flex: the host kernels of `host::attention`.

use burn::backend::{
    Flex, TensorMetadata,
    tensor::{FloatTensor, IntTensor},
};

use qlora_cpu_gemm::matmul_tier;

use super::{f32s, i64s, slice, tensor};
use crate::host::attention::{attention_backward, attention_forward};
use crate::ops::{CausalAttentionOps, attention_dims};

/// The forward kernel, with segment `starts` for a padding-free batch or without.
fn forward(
    q: FloatTensor<Flex>,
    k: FloatTensor<Flex>,
    v: FloatTensor<Flex>,
    starts: Option<IntTensor<Flex>>,
    scale: f32,
    window: Option<usize>,
) -> FloatTensor<Flex> {
    let s = attention_dims(&q, &k, &v, scale, window);
    let dtype = q.dtype();
    let (q, k, v, starts) = (f32s(q), f32s(k), f32s(v), starts.map(i64s));
    let starts = starts
        .as_ref()
        .map(|t| t.as_slice::<i64>().expect("contiguous i64"));
    let out = attention_forward(&s, starts, slice(&q), slice(&k), slice(&v), matmul_tier());
    tensor(out, vec![s.b, s.h, s.tq, s.dv], dtype)
}

/// The backward kernel, as [`forward`].
fn backward(
    q: FloatTensor<Flex>,
    k: FloatTensor<Flex>,
    v: FloatTensor<Flex>,
    starts: Option<IntTensor<Flex>>,
    dout: FloatTensor<Flex>,
    (scale, window): (f32, Option<usize>),
) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
    let s = attention_dims(&q, &k, &v, scale, window);
    let dtype = q.dtype();
    let shapes = (q.shape(), k.shape(), v.shape());
    let (q, k, v, dout, starts) = (f32s(q), f32s(k), f32s(v), f32s(dout), starts.map(i64s));
    let starts = starts
        .as_ref()
        .map(|t| t.as_slice::<i64>().expect("contiguous i64"));
    let (dq, dk, dv) = attention_backward(
        &s,
        starts,
        slice(&q),
        slice(&k),
        slice(&v),
        slice(&dout),
        matmul_tier(),
    );
    (
        tensor(dq, shapes.0.as_slice().to_vec(), dtype),
        tensor(dk, shapes.1.as_slice().to_vec(), dtype),
        tensor(dv, shapes.2.as_slice().to_vec(), dtype),
    )
}

impl CausalAttentionOps for Flex {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        forward(q, k, v, None, scale, window)
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        backward(q, k, v, None, dout, (scale, window))
    }

    fn causal_attention_segmented(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        forward(q, k, v, Some(starts), scale, window)
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
        backward(q, k, v, Some(starts), dout, (scale, window))
    }
}
