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

use crate::cube_tune::{self, Nf4Kernel};
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

/// Everything a kernel of [`Nf4Kernel`] reads, prepared once per call: the tuner's input, which
/// it clones for each benchmark run (handles and shapes; no device memory is copied).
#[derive(Clone)]
pub(crate) struct Nf4Inputs {
    /// The left operand, contiguous, `[.., k_red]`.
    pub lhs: CubeTensor,
    /// The weight (for the dequantize-then-matmul candidate).
    pub w: Nf4Primitive<CubeBackend>,
    /// The packed codes, contiguous.
    pub packed: CubeTensor,
    /// The f32 absmax of every block.
    pub absmax: Handle,
    /// The 16-entry code table.
    pub code: Handle,
    /// Rows of the product.
    pub m: usize,
    /// Columns of the product.
    pub n_out: usize,
    /// The reduced dimension.
    pub k_red: usize,
    /// `B = W` (backward input) rather than `B = Wᵀ` (forward).
    pub transposed: bool,
    /// The output's shape (`lhs`'s with the last dimension `n_out`).
    pub out_shape: Shape,
}

/// The product of `inputs` by `kernel` (which must [apply](Nf4Kernel::applies) to it), a new tensor.
pub(crate) fn run_kernel(kernel: Nf4Kernel, inputs: &Nf4Inputs) -> CubeTensor {
    if kernel == Nf4Kernel::DequantMatmul {
        return dequant_matmul(
            inputs.lhs.clone(),
            inputs.w.clone(),
            inputs.transposed,
            inputs.m,
            inputs.out_shape.clone(),
        );
    }
    let client = &inputs.lhs.client;
    let out = empty_device_contiguous_dtype(
        client.clone(),
        inputs.lhs.device.clone(),
        inputs.out_shape.clone(),
        inputs.lhs.dtype,
    );
    let launch: qlora_kernels::Nf4MatmulLaunch = match kernel {
        // The GEMV computes the forward product only (never chosen for `transposed`).
        Nf4Kernel::Gemv => |c, x, p, a, code, o, shape, _, bs, d| {
            qlora_kernels::launch_nf4_gemv(c, x, p, a, code, o, shape, bs, d)
        },
        Nf4Kernel::Tiled => qlora_kernels::launch_nf4_matmul_tiled,
        _ => qlora_kernels::launch_nf4_matmul,
    };
    launch(
        client,
        inputs.lhs.handle.clone(),
        inputs.packed.handle.clone(),
        inputs.absmax.clone(),
        inputs.code.clone(),
        out.handle.clone(),
        (inputs.m, inputs.n_out, inputs.k_red),
        inputs.transposed,
        inputs.w.layout.blocksize,
        storage(inputs.lhs.dtype),
    );
    out
}

/// `out[m, n_out] = lhs[m, k_red] · B` by the kernel [`cube_tune`](crate::cube_tune) picks for
/// the shape on this device.
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
    if m == 0 || n_out == 0 {
        return empty_device_contiguous_dtype(
            lhs.client.clone(),
            lhs.device.clone(),
            out_shape,
            lhs.dtype,
        );
    }
    let scales = into_contiguous(w.scales.clone());
    let packed = into_contiguous(w.packed.clone());
    let absmax = absmax_handle(&scales, &layout);
    let code = code_handle(&lhs.client, &layout);
    cube_tune::nf4_matmul(Nf4Inputs {
        lhs,
        w,
        packed,
        absmax,
        code,
        m,
        n_out,
        k_red,
        transposed,
        out_shape,
    })
}

/// The whole weight dequantized, then the backend's matmul.
fn dequant_matmul(
    lhs: CubeTensor,
    w: Nf4Primitive<CubeBackend>,
    transposed: bool,
    m: usize,
    out_shape: Shape,
) -> CubeTensor {
    use burn::backend::ops::FloatTensorOps;
    type B = CubeBackend;
    let layout = w.layout;
    let dtype = lhs.dtype;
    let mut dense = <B as Nf4Ops>::nf4_dequantize(w);
    if dtype != DType::F32 {
        dense = B::float_cast(dense, dtype.into());
    }
    let rhs = if transposed {
        dense
    } else {
        B::float_transpose(dense)
    };
    let k_red = if transposed { layout.rows } else { layout.cols };
    let x = B::float_reshape(lhs, Shape::new([m, k_red]));
    B::float_reshape(B::float_matmul(x, rhs), out_shape)
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
