//! The `nf4_*` op trait, implemented per backend and reached from `Tensor` code through
//! `Dispatch`.

use burn::backend::{Backend, Shape, backend_extension, tensor::FloatTensor};

use crate::Nf4Primitive;

/// Operations on an NF4 weight `W` of PyTorch layout `[rows, cols]` = `[out, in]`.
///
/// Implemented for Flex (pure Rust, tiled, multithreaded), for the CubeCL backend and its Fusion
/// wrapper (feature `cube`, with a runtime feature such as `wgpu` or `cuda`), and for Autodiff
/// over any of them (the backward keeps only the packed weight). Calling an op on a device whose
/// backend has no implementation panics with Burn's "unsupported backend" message.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait Nf4Ops: Backend {
    /// The dense weight `[rows, cols]` in f32: `code[nibble] * absmax[block]` per element.
    #[fusion(dtype = burn::backend::DType::F32, shape = Shape::new([w.layout.rows, w.layout.cols]))]
    fn nf4_dequantize(#[extension_type] w: Nf4Primitive<Self>) -> FloatTensor<Self>;

    /// `y = x · Wᵀ`: `x` is `[..., cols]`, `y` is `[..., rows]`, computed without materialising
    /// the dense `W` (tiles of rows are dequantized into cache-sized panels).
    #[fusion(dtype = x, shape = linear_out_shape(x, w.layout.cols, w.layout.rows, "nf4_linear"))]
    fn nf4_linear(
        x: FloatTensor<Self>,
        #[extension_type] w: Nf4Primitive<Self>,
    ) -> FloatTensor<Self>;

    /// [`Nf4Ops::nf4_linear`] where nothing reads the output's values, only its gradient: a
    /// zero tensor of the output's shape whose backward pass is `nf4_linear`'s (`dx = dy · W`).
    /// For the last product of a checkpointed block's recomputation, whose output is not read
    /// (the first pass already gave it): the product is not computed a second time.
    #[fusion(default)]
    fn nf4_linear_output_unused(
        x: FloatTensor<Self>,
        #[extension_type] w: Nf4Primitive<Self>,
    ) -> FloatTensor<Self> {
        use burn::backend::TensorMetadata;
        let shape = linear_out_shape(&x.shape(), w.layout.cols, w.layout.rows, "nf4_linear");
        Self::float_zeros(shape, &x.device(), x.dtype().into())
    }

    /// `dx = dy · W`: `dy` is `[..., rows]`, `dx` is `[..., cols]`; the input gradient of
    /// [`Nf4Ops::nf4_linear`].
    #[fusion(dtype = dy, shape = linear_out_shape(dy, w.layout.rows, w.layout.cols, "nf4_linear_backward_input"))]
    fn nf4_linear_backward_input(
        dy: FloatTensor<Self>,
        #[extension_type] w: Nf4Primitive<Self>,
    ) -> FloatTensor<Self>;
}

/// `[..., cols] -> [..., rows]`, checking the last dimension.
///
/// # Panics
/// If the input's last dimension is not `expect_last`.
pub fn linear_out_shape(input: &Shape, expect_last: usize, out_last: usize, op: &str) -> Shape {
    let dims = input.as_slice();
    let last = *dims
        .last()
        .unwrap_or_else(|| panic!("{op}: input must have at least one dimension"));
    assert_eq!(
        last, expect_last,
        "{op}: input has {last} features in its last dimension, the NF4 weight expects {expect_last}"
    );
    let mut out = dims.to_vec();
    *out.last_mut().expect("non-empty") = out_last;
    Shape::from(out)
}
