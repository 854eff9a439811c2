//! `Nf4Ops` for `CubeBackend`: every CubeCL runtime (CUDA, ROCm, wgpu, the CPU runtime) through
//! the kernels of `qlora-kernels`.

use burn::backend::{DType, Shape, TensorMetadata, tensor::FloatTensor};
use burn_cubecl::{
    CubeBackend,
    cubecl::{prelude::*, server::Handle},
    kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};

use crate::{Nf4Layout, Nf4Ops, Nf4Primitive, ops::linear_out_shape};

/// The f32 absmax of every block as a device buffer: the scales themselves without double
/// quantization (their words are f32 bits), decoded on the device with it.
fn absmax_handle(scales: &CubeTensor, layout: &Nf4Layout) -> Handle {
    match layout.nested_blocksize {
        None => scales.handle.clone(),
        Some(nb) => qlora_kernels::decode_double_quant_absmax(
            &scales.client,
            scales.handle.clone(),
            layout.scales_words(),
            layout.blocks(),
            layout.codes_start(),
            nb,
        ),
    }
}

fn code_handle(client: &Client, layout: &Nf4Layout) -> Handle {
    client.create_from_slice(f32::as_bytes(layout.quant_type.dequant_table()))
}

fn storage(dtype: DType) -> ElemType {
    burn::backend::cubecl::dtype_to_storage_type(dtype)
}

/// Runs the fused dequantize-matmul: `out[m, n_out] = lhs[m, k_red] · B`.
fn matmul(lhs: CubeTensor, w: Nf4Primitive<CubeBackend>, transposed: bool, op: &str) -> CubeTensor {
    let layout = w.layout;
    let (k_red, n_out) = if transposed {
        (layout.rows, layout.cols)
    } else {
        (layout.cols, layout.rows)
    };
    let out_shape = linear_out_shape(&lhs.shape(), k_red, n_out, op);
    let lhs = into_contiguous(lhs);
    let m = lhs.shape().num_elements() / k_red.max(1);
    let scales = into_contiguous(w.scales);
    let packed = into_contiguous(w.packed);
    let client = lhs.client.clone();
    let out =
        empty_device_contiguous_dtype(client.clone(), lhs.device.clone(), out_shape, lhs.dtype);
    if m == 0 || n_out == 0 {
        return out;
    }
    qlora_kernels::launch_nf4_matmul(
        &client,
        lhs.handle.clone(),
        packed.handle.clone(),
        absmax_handle(&scales, &layout),
        code_handle(&client, &layout),
        out.handle.clone(),
        (m, n_out, k_red),
        transposed,
        layout.blocksize,
        storage(lhs.dtype),
    );
    out
}

impl Nf4Ops for CubeBackend {
    fn nf4_dequantize(w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        let layout = w.layout;
        let scales = into_contiguous(w.scales);
        let packed = into_contiguous(w.packed);
        let client = packed.client.clone();
        let out = empty_device_contiguous_dtype(
            client.clone(),
            packed.device.clone(),
            Shape::new([layout.rows, layout.cols]),
            DType::F32,
        );
        qlora_kernels::launch_dequantize(
            &client,
            packed.handle.clone(),
            absmax_handle(&scales, &layout),
            code_handle(&client, &layout),
            layout.numel(),
            layout.blocksize,
            out.handle.clone(),
            storage(DType::F32),
        );
        out
    }

    fn nf4_linear(x: FloatTensor<Self>, w: Nf4Primitive<Self>) -> FloatTensor<Self> {
        matmul(x, w, false, "nf4_linear")
    }

    fn nf4_linear_backward_input(
        dy: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
    ) -> FloatTensor<Self> {
        matmul(dy, w, true, "nf4_linear_backward_input")
    }
}

/// The composite default bodies (the backend's own matmul, softmax and scatter kernels).
impl crate::LinearCrossEntropyOps for CubeBackend {}
