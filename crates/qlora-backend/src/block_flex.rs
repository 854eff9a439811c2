//! `BlockOps` for Flex: the host kernels of [`crate::block_cpu`] on the tensors' buffers
//! (computed in f32, results in the inputs' float type).

use burn::backend::{Flex, TensorData, TensorMetadata, flex::FlexTensor, tensor::FloatTensor};

use crate::attn_flex::{as_dtype, slice};
use crate::block_cpu;
use crate::block_ops::BlockOps;
use crate::ce_flex::f32s;

/// `values` as a tensor of `shape` in `like`'s float type.
fn tensor(values: Vec<f32>, shape: Vec<usize>, like: &FlexTensor) -> FlexTensor {
    as_dtype(
        FlexTensor::from_data(TensorData::new(values, shape)),
        like.dtype(),
    )
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.shape().as_slice().to_vec()
}

impl BlockOps for Flex {
    fn rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let shape = dims(&x);
        let (xf, wf) = (f32s(x.clone()), f32s(w));
        tensor(block_cpu::rms_norm(slice(&xf), slice(&wf), eps), shape, &x)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (xf, wf, dyf) = (f32s(x.clone()), f32s(w), f32s(dy));
        let out = block_cpu::rms_norm_backward(slice(&xf), slice(&wf), slice(&dyf), eps);
        let n = out.len();
        tensor(out, vec![n], &x)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = dims(&gate);
        let (g, u) = (f32s(gate.clone()), f32s(up));
        tensor(block_cpu::swiglu(slice(&g), slice(&u)), shape, &gate)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (g, u, d) = (f32s(gate.clone()), f32s(up), f32s(dy));
        let out = block_cpu::swiglu_backward(slice(&g), slice(&u), slice(&d));
        let n = out.len();
        tensor(out, vec![n], &gate)
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let shape = dims(&x);
        let d = *shape.last().expect("rope: a 4-D input");
        let (xf, c, s) = (f32s(x.clone()), f32s(cos), f32s(sin));
        let y = block_cpu::rope(slice(&xf), slice(&c), slice(&s), d, transpose);
        tensor(y, shape, &x)
    }
}
