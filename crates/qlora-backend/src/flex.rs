//! `Nf4Ops` for Flex, Burn's pure-Rust CPU backend: the kernels of [`crate::cpu`] on the
//! tensors' host buffers.

use burn::backend::{
    DType, Flex, FloatDType, TensorData, TensorMetadata, flex::FlexTensor, ops::FloatTensorOps,
    tensor::FloatTensor,
};

use crate::{CpuNf4, Nf4Ops, Nf4Primitive, ops::linear_out_shape};

impl Nf4Ops for Flex {
    fn nf4_dequantize(w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        let (packed, scales) = (words(&w.packed, "packed"), words(&w.scales, "scales"));
        let dense = CpuNf4::new(w.layout, &packed, &scales).dequantize();
        FlexTensor::from_data(TensorData::new(dense, [w.layout.rows, w.layout.cols]))
    }

    fn nf4_linear(x: FloatTensor<Self>, w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        let out_shape = linear_out_shape(&x.shape(), w.layout.cols, w.layout.rows, "nf4_linear");
        let (packed, scales) = (words(&w.packed, "packed"), words(&w.scales, "scales"));
        with_f32(
            x,
            |x, m| CpuNf4::new(w.layout, &packed, &scales).linear(x, m),
            out_shape,
        )
    }

    fn nf4_linear_backward_input(
        dy: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
    ) -> FloatTensor<Self> {
        let out_shape = linear_out_shape(
            &dy.shape(),
            w.layout.rows,
            w.layout.cols,
            "nf4_linear_backward_input",
        );
        let (packed, scales) = (words(&w.packed, "packed"), words(&w.scales, "scales"));
        with_f32(
            dy,
            |dy, m| CpuNf4::new(w.layout, &packed, &scales).linear_backward_input(dy, m),
            out_shape,
        )
    }
}

/// Runs `f` on the host view of a Flex NF4 weight (for host kernels of other crates, such as
/// `qlora-fused`'s fused LoRA linear).
pub fn with_host_nf4<T>(w: &Nf4Primitive<Flex>, f: impl FnOnce(&CpuNf4<'_>) -> T) -> T {
    let (packed, scales) = (words(&w.packed, "packed"), words(&w.scales, "scales"));
    f(&CpuNf4::new(w.layout, &packed, &scales))
}

/// The `u32` words of an int tensor (copied only if it is not a contiguous `U32` tensor).
fn words<'a>(t: &'a FlexTensor, what: &str) -> std::borrow::Cow<'a, [u32]> {
    assert!(
        t.dtype() == DType::U32,
        "NF4 {what} tensor must be U32 words, found {:?}",
        t.dtype()
    );
    match t.as_slice::<u32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<u32>()
                .expect("contiguous")
                .to_vec(),
        ),
    }
}

/// Runs `f` on the f32 rows of `x` (`[m, last]` flattened), casting other float dtypes to f32
/// and the result back, and returns a tensor of `out_shape`.
fn with_f32(
    x: FlexTensor,
    f: impl FnOnce(&[f32], usize) -> Vec<f32>,
    out_shape: burn::backend::Shape,
) -> FlexTensor {
    let dtype = x.dtype();
    let x = if dtype == DType::F32 {
        x
    } else {
        <Flex as FloatTensorOps<Flex>>::float_cast(x, FloatDType::F32)
    };
    let x = if x.is_contiguous() && x.as_slice::<f32>().is_some() {
        x
    } else {
        x.to_contiguous()
    };
    let data = x.as_slice::<f32>().expect("contiguous f32");
    let last = x.shape().as_slice().last().copied().unwrap_or(1).max(1);
    let y = f(data, data.len() / last);
    let y = FlexTensor::from_data(TensorData::new(y, out_shape));
    if dtype == DType::F32 {
        y
    } else {
        <Flex as FloatTensorOps<Flex>>::float_cast(y, dtype.into())
    }
}
