//! The QLoRA linear as one op: `y = x · dequant(W)ᵀ + s · (dropout(x) · Aᵀ) · Bᵀ`.
//!
//! Composed of Burn ops, a LoRA layer is a chain of five (dropout, two thin products, a scale and
//! the sum with the base's output), and autodiff keeps the dropped-out input of every adapted
//! linear. On the CPU that chain costs more than the adapters' arithmetic (rank 16 against the
//! hundreds of columns of the base): each op allocates a fresh `[tokens, features]` buffer,
//! whose first touch page-faults, and the backward pass adds as many again. Measured on the
//! default model, the six extra adapters per layer of `all-linear` cost about 40 % of the step.
//!
//! Fused (the approach of Unsloth's `LoRA_MLP`/`LoRA_QKV` kernels), the base GEMM's output is
//! the only large buffer of the forward pass: `s · x·Aᵀ` `[tokens, r]` is computed once and
//! `(s · x·Aᵀ) · Bᵀ` is accumulated into the base's output. The backward pass accumulates
//! `dh · A` into the base's input gradient. The state is the input `x` (shared by every linear
//! reading the same tensor: q, k and v keep one copy, where the composed chain kept three
//! dropped-out copies), the `[tokens, r]` intermediate and the packed weight; the dropout mask
//! is drawn again from its seed (see [`crate::seeded_dropout`]), with the same mask as the
//! composed chain.

use burn::backend::{
    Backend, Dispatch, Shape, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;
use qlora_backend::{Nf4Ops, Nf4Primitive, Nf4Weight};

use super::dims2;
use super::dropout::mask;

/// The fused QLoRA linear (see the module docs). Flex has a host kernel; other backends use the
/// default bodies, composed of the backend's own ops; Autodiff keeps `x`, the rank-`r`
/// intermediate and the packed weight.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait LoraLinearOps: Nf4Ops {
    /// `(y, h)`: `y = base + h · Bᵀ` `[m, out]` and `h = s · dropout(x) · Aᵀ` `[m, r]`, for
    /// `x` `[m, in]`, `W` `[out, in]`, `A` `[r, in]`, `B` `[out, r]`; `base` is `x · Wᵀ`, or
    /// zeros when `base` is false (a recomputation that reads only the output's gradient).
    /// `dropout` is the probability (0: none) of a mask drawn from `seed`.
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)]
    fn nf4_lora_linear(
        x: FloatTensor<Self>,
        #[extension_type] w: Nf4Primitive<Self>,
        lora_a: FloatTensor<Self>,
        lora_b: FloatTensor<Self>,
        scaling: f32,
        dropout: f32,
        seed: u64,
        base: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let y = if base {
            Self::nf4_linear(x.clone(), w)
        } else {
            Self::nf4_linear_output_unused(x.clone(), w)
        };
        let xd = dropped::<Self>(x, dropout, seed);
        let h = Self::float_mul_scalar(
            Self::float_matmul(xd, Self::float_transpose(lora_a)),
            scaling.into(),
        );
        let delta = Self::float_matmul(h.clone(), Self::float_transpose(lora_b));
        (Self::float_add(y, delta), h)
    }

    /// The gradients `(dx, dA, dB)` of [`LoraLinearOps::nf4_lora_linear`] under `dy` `[m, out]`,
    /// from its input `x` and intermediate `h`: `dh = s · dy · B`, `dB = dyᵀ · h`,
    /// `dA = dhᵀ · dropout(x)` and `dx = dy · W + dropout'(dh · A)`. With `input_grad` false,
    /// `dx` is not computed and is an empty `[0, in]` tensor.
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)]
    fn nf4_lora_linear_backward(
        dy: FloatTensor<Self>,
        #[extension_type] w: Nf4Primitive<Self>,
        x: FloatTensor<Self>,
        h: FloatTensor<Self>,
        lora_a: FloatTensor<Self>,
        lora_b: FloatTensor<Self>,
        scaling: f32,
        dropout: f32,
        seed: u64,
        input_grad: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [_, k] = dims2(&x, "x");
        let dh = Self::float_mul_scalar(Self::float_matmul(dy.clone(), lora_b), scaling.into());
        let db = Self::float_matmul(Self::float_transpose(dy.clone()), h);
        let xd = dropped::<Self>(x.clone(), dropout, seed);
        let da = Self::float_matmul(Self::float_transpose(dh.clone()), xd);
        let dx = if input_grad {
            // Dropout is its own adjoint: the same mask on the gradient.
            let t = dropped::<Self>(Self::float_matmul(dh, lora_a), dropout, seed);
            Self::float_add(Self::nf4_linear_backward_input(dy, w), t)
        } else {
            Self::float_zeros(Shape::new([0, k]), &x.device(), x.dtype().into())
        };
        (dx, da, db)
    }
}

/// `dropout(x)` with the mask of `seed`, or `x` when `prob` is 0.
fn dropped<B: Backend>(x: FloatTensor<B>, prob: f32, seed: u64) -> FloatTensor<B> {
    if prob > 0.0 {
        let m = mask::<B>(&x, prob, seed);
        B::float_mul(x, m)
    } else {
        x
    }
}

/// One LoRA adapter as the fused op takes it: `A` `[r, in]`, `B` `[out, r]`, the scaling and
/// the dropout (probability and seed; `None` when the input is not dropped out).
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// `lora_A.weight`, `[r, in_features]`.
    pub lora_a: Tensor<2>,
    /// `lora_B.weight`, `[out_features, r]`.
    pub lora_b: Tensor<2>,
    /// `lora_alpha / r` (or over `√r` with rsLoRA).
    pub scaling: f64,
    /// `(probability, seed)` of the dropout on the adapter's input.
    pub dropout: Option<(f64, u64)>,
}

/// `y = x · dequant(W)ᵀ + s · (dropout(x) · Aᵀ) · Bᵀ` as one op (see the module docs); with
/// `base` false the base's product is not computed (zeros, with its backward: the last linear
/// of a checkpointed block's recomputation). Differentiable in `x`, `A` and `B`.
///
/// - `x`: `[..., in_features]`
/// - returns `[..., out_features]`
///
/// # Panics
/// If the shapes disagree, or the dropout probability is not in `[0, 1)`.
pub fn nf4_lora_linear<const D: usize>(
    x: Tensor<D>,
    w: &Nf4Weight,
    lora: LoraFactors,
    base: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let (in_features, out_features) = (w.in_features(), w.out_features());
    assert_eq!(
        dims[D - 1],
        in_features,
        "nf4_lora_linear: input has {} features, the weight expects {in_features}",
        dims[D - 1]
    );
    let ([r, a_in], [b_out, rb]) = (lora.lora_a.dims(), lora.lora_b.dims());
    assert!(
        a_in == in_features && b_out == out_features && rb == r,
        "nf4_lora_linear: adapter A [{r}, {a_in}] and B [{b_out}, {rb}] do not fit the weight \
         [{out_features}, {in_features}]"
    );
    let (prob, seed) = lora.dropout.unwrap_or((0.0, 0));
    assert!(
        (0.0..1.0).contains(&prob),
        "dropout probability {prob} is not in [0, 1)"
    );
    let rows = dims[..D - 1].iter().product::<usize>();
    let x2: Tensor<2> = x.reshape([rows, in_features]);
    let (y, _h) = <Dispatch as LoraLinearOps>::nf4_lora_linear(
        x2.into_dispatch(),
        w.primitive(),
        lora.lora_a.into_dispatch(),
        lora.lora_b.into_dispatch(),
        lora.scaling as f32,
        prob as f32,
        seed,
        base,
    );
    let mut out = dims;
    out[D - 1] = out_features;
    Tensor::<2>::from_dispatch(y).reshape(out)
}
