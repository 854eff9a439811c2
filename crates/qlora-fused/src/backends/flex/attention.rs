//! `CausalAttentionOps` for Flex: the host kernels of `host::attention`.

use burn::backend::{
    Flex, TensorMetadata,
    tensor::{FloatTensor, IntTensor},
};

use super::{f32s, i64s, slice, tensor};
use crate::host::attention::{
    attention_backward, attention_backward_segmented, attention_forward,
    attention_forward_segmented,
};
use crate::ops::{CausalAttentionOps, attention_dims};

impl CausalAttentionOps for Flex {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        let s = attention_dims(&q, &k, &v, scale, window);
        let dtype = q.dtype();
        let (q, k, v) = (f32s(q), f32s(k), f32s(v));
        let out = attention_forward(&s, slice(&q), slice(&k), slice(&v));
        tensor(out, vec![s.b, s.h, s.tq, s.dv], dtype)
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let s = attention_dims(&q, &k, &v, scale, window);
        let dtype = q.dtype();
        let shapes = (q.shape(), k.shape(), v.shape());
        let (q, k, v, dout) = (f32s(q), f32s(k), f32s(v), f32s(dout));
        let (dq, dk, dv) = attention_backward(&s, slice(&q), slice(&k), slice(&v), slice(&dout));
        (
            tensor(dq, shapes.0.as_slice().to_vec(), dtype),
            tensor(dk, shapes.1.as_slice().to_vec(), dtype),
            tensor(dv, shapes.2.as_slice().to_vec(), dtype),
        )
    }

    fn causal_attention_segmented(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        let s = attention_dims(&q, &k, &v, scale, window);
        let dtype = q.dtype();
        let (q, k, v, starts) = (f32s(q), f32s(k), f32s(v), i64s(starts));
        let starts = starts.as_slice::<i64>().expect("contiguous i64");
        let out = attention_forward_segmented(&s, Some(starts), slice(&q), slice(&k), slice(&v));
        tensor(out, vec![s.b, s.h, s.tq, s.dv], dtype)
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
        let s = attention_dims(&q, &k, &v, scale, window);
        let dtype = q.dtype();
        let shapes = (q.shape(), k.shape(), v.shape());
        let (q, k, v, dout, starts) = (f32s(q), f32s(k), f32s(v), f32s(dout), i64s(starts));
        let starts = starts.as_slice::<i64>().expect("contiguous i64");
        let (dq, dk, dv) = attention_backward_segmented(
            &s,
            Some(starts),
            slice(&q),
            slice(&k),
            slice(&v),
            slice(&dout),
        );
        (
            tensor(dq, shapes.0.as_slice().to_vec(), dtype),
            tensor(dk, shapes.1.as_slice().to_vec(), dtype),
            tensor(dv, shapes.2.as_slice().to_vec(), dtype),
        )
    }
}
