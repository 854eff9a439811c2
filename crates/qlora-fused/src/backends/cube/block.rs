//! [`BlockOps`] on `CubeBackend` (and, through the ops' Fusion metadata, on
//! `Fusion<CubeBackend>`): one kernel per pass of each op (`block_kernels`) instead of the five
//! to ten element-wise ops and reductions of the composed default bodies.

use burn::backend::{
    DType, Shape, TensorMetadata, cubecl::dtype_to_storage_type, ops::FloatTensorOps,
    tensor::FloatTensor,
};
use burn_cubecl::{
    CubeBackend, cubecl::prelude::*, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
};

use super::block_kernels::{
    UNITS, glu_backward_kernel, glu_kernel, rms_norm_backward_kernel, rms_norm_kernel,
    rms_norm_weight_grad_kernel, rope_kernel,
};
use super::tensors::{buffer, cast_to, contiguous_as, empty_like};
use crate::ops::{BlockOps, GELU_BETA, GELU_KAPPA, last_dim};

/// Rows per part of RMSNorm's weight gradient (at least; more where the rows would need over
/// 65,535 parts).
const RMS_DW_CHUNK: usize = 64;

/// A grid of `cubes` cubes folded into two dimensions (65,535 at most in one).
fn grid(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, 65_535);
    CubeCount::Static(x as u32, cubes.div_ceil(x).max(1) as u32, 1)
}

/// `(rows, n)` of a tensor whose last dimension is `n`.
fn rows_n(x: &CubeTensor) -> (usize, usize) {
    let (shape, n) = last_dim(x);
    (shape.num_elements() / n.max(1), n)
}

fn glu(gate: CubeTensor, up: CubeTensor, gelu: bool) -> CubeTensor {
    let gate = into_contiguous(gate);
    let up = contiguous_as(up, gate.dtype);
    let y = empty_like(&gate, gate.shape());
    let len = gate.shape().num_elements();
    if len > 0 {
        // SAFETY: contiguous tensors of `len` elements.
        unsafe {
            glu_kernel::launch(
                &gate.client,
                grid(len.div_ceil(UNITS)),
                CubeDim::new_1d(UNITS as u32),
                buffer(&gate),
                buffer(&up),
                buffer(&y),
                len,
                GELU_BETA,
                GELU_KAPPA,
                gelu,
                dtype_to_storage_type(gate.dtype),
            );
        }
    }
    y
}

fn glu_backward(
    gate: CubeTensor,
    up: CubeTensor,
    dy: CubeTensor,
    gelu: bool,
) -> (CubeTensor, CubeTensor) {
    let up_dtype = up.dtype;
    let gate = into_contiguous(gate);
    let up = contiguous_as(up, gate.dtype);
    let dy = contiguous_as(dy, gate.dtype);
    let (dg, du) = (
        empty_like(&gate, gate.shape()),
        empty_like(&gate, gate.shape()),
    );
    let len = gate.shape().num_elements();
    if len > 0 {
        // SAFETY: contiguous tensors of `len` elements.
        unsafe {
            glu_backward_kernel::launch(
                &gate.client,
                grid(len.div_ceil(UNITS)),
                CubeDim::new_1d(UNITS as u32),
                buffer(&gate),
                buffer(&up),
                buffer(&dy),
                buffer(&dg),
                buffer(&du),
                len,
                GELU_BETA,
                GELU_KAPPA,
                gelu,
                dtype_to_storage_type(gate.dtype),
            );
        }
    }
    (dg, cast_to(du, up_dtype))
}

/// One kernel a pass (see the module docs).
impl BlockOps for CubeBackend {
    fn rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let w = contiguous_as(w, x.dtype);
        let y = empty_like(&x, x.shape());
        let (rows, n) = rows_n(&x);
        if rows * n > 0 {
            // SAFETY: contiguous tensors of their shapes' counts.
            unsafe {
                rms_norm_kernel::launch(
                    &x.client,
                    grid(rows),
                    CubeDim::new_1d(UNITS as u32),
                    buffer(&x),
                    buffer(&w),
                    buffer(&y),
                    rows,
                    n,
                    eps,
                    dtype_to_storage_type(x.dtype),
                );
            }
        }
        y
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let w_dtype = w.dtype;
        let x = into_contiguous(x);
        let w = contiguous_as(w, x.dtype);
        let dy = contiguous_as(dy, x.dtype);
        let (rows, n) = rows_n(&x);
        let dx = empty_like(&x, x.shape());
        if rows * n == 0 {
            let dw = CubeBackend::float_zeros(Shape::new([n]), &x.device, w_dtype.into());
            return (dx, dw);
        }
        let inv = x.client.empty(rows * 4);
        let dtype = dtype_to_storage_type(x.dtype);
        // The weight's gradient in chunks of rows, enough of them to fill the device.
        let chunk = RMS_DW_CHUNK.max(rows.div_ceil(65_535));
        let chunks = rows.div_ceil(chunk);
        let partial = empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([chunks, n]),
            DType::F32,
        );
        // SAFETY: contiguous tensors of their shapes' counts; `inv` holds `rows` f32.
        unsafe {
            rms_norm_backward_kernel::launch(
                &x.client,
                grid(rows),
                CubeDim::new_1d(UNITS as u32),
                buffer(&x),
                buffer(&w),
                buffer(&dy),
                buffer(&dx),
                BufferArg::from_raw_parts(inv.clone(), rows),
                rows,
                n,
                eps,
                dtype,
            );
            rms_norm_weight_grad_kernel::launch(
                &x.client,
                CubeCount::Static(n.div_ceil(UNITS) as u32, chunks as u32, 1),
                CubeDim::new_1d(UNITS as u32),
                buffer(&x),
                buffer(&dy),
                BufferArg::from_raw_parts(inv, rows),
                buffer(&partial),
                rows,
                n,
                chunk,
                dtype,
            );
        }
        let dw =
            CubeBackend::float_reshape(CubeBackend::float_sum_dim(partial, 0), Shape::new([n]));
        (dx, cast_to(dw, w_dtype))
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        glu(gate, up, false)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        glu_backward(gate, up, dy, false)
    }

    fn geglu_tanh(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        glu(gate, up, true)
    }

    fn geglu_tanh_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        glu_backward(gate, up, dy, true)
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let (cos, sin) = (contiguous_as(cos, x.dtype), contiguous_as(sin, x.dtype));
        let dims = x.shape().as_slice().to_vec();
        let (t, d) = (dims[2], dims[3]);
        let w = cos.shape().as_slice()[1];
        let y = empty_like(&x, x.shape());
        let len = x.shape().num_elements();
        if len > 0 {
            // SAFETY: contiguous tensors of their shapes' counts.
            unsafe {
                rope_kernel::launch(
                    &x.client,
                    grid(len.div_ceil(UNITS)),
                    CubeDim::new_1d(UNITS as u32),
                    buffer(&x),
                    buffer(&cos),
                    buffer(&sin),
                    buffer(&y),
                    len,
                    t,
                    d,
                    w,
                    transpose,
                    dtype_to_storage_type(x.dtype),
                );
            }
        }
        y
    }
}
