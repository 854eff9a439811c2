//! The element-wise parts of a LLaMA block as extension ops with their own backward passes:
//! RMSNorm, SwiGLU's `silu(gate) ∘ up`, GeGLU's `gelu_tanh(gate) ∘ up` and rotary embeddings.
//!
//! Composed of Burn ops, each of these is five to ten element-wise ops, and under Autodiff as
//! many backward nodes, each op a pass over memory and a fresh buffer. Flex runs one fused host
//! kernel per pass (`host::block`), CubeCL runtimes one CubeCL kernel per pass
//! (`backends/cube/block_kernels.rs`); the default bodies, composed of a backend's own ops,
//! define the ops.

use burn::backend::{
    Backend, Dispatch, Shape, Slice, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;

/// RMSNorm, SwiGLU, GeGLU and RoPE (see the module docs). A backward op returns the gradients of
/// `Σ dy ∘ op(..)` with respect to the op's inputs, in their order and shapes.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait BlockOps: Backend {
    /// `w ∘ x / √(mean(x²) + ε)` over the last dimension of `x` `[.., n]`, `w` `[n]`.
    #[fusion(dtype = x, shape = x)]
    fn rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let (shape, n) = last_dim(&x);
        let r = inv_rms::<Self>(x.clone(), eps);
        let w = Self::float_expand(
            Self::float_reshape(w, Shape::new([1, n])),
            shape_2d(&shape, n),
        );
        let x = Self::float_reshape(x, shape_2d(&shape, n));
        Self::float_reshape(Self::float_mul(Self::float_mul(x, r), w), shape)
    }

    /// `(dx, dw)` of [`BlockOps::rms_norm`] under the gradient `dy`.
    #[fusion(meta = |x, w, _dy, _eps| (x.clone(), w.clone()))]
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (shape, n) = last_dim(&x);
        let s2 = shape_2d(&shape, n);
        let r = inv_rms::<Self>(x.clone(), eps);
        let x = Self::float_reshape(x, s2.clone());
        let dy = Self::float_reshape(dy, s2.clone());
        let w = Self::float_expand(Self::float_reshape(w, Shape::new([1, n])), s2.clone());
        let g = Self::float_mul(dy.clone(), w);
        // c = r³ · mean(x ∘ g)
        let r3 = Self::float_mul(Self::float_mul(r.clone(), r.clone()), r.clone());
        let c = Self::float_mul(
            Self::float_div_scalar(
                Self::float_sum_dim(Self::float_mul(x.clone(), g.clone()), 1),
                (n as f32).into(),
            ),
            r3,
        );
        let dx = Self::float_sub(
            Self::float_mul(g, r.clone()),
            Self::float_mul(x.clone(), Self::float_expand(c, s2.clone())),
        );
        let dw = Self::float_sum_dim(Self::float_mul(Self::float_mul(dy, x), r), 0);
        (
            Self::float_reshape(dx, shape),
            Self::float_reshape(dw, Shape::new([n])),
        )
    }

    /// `silu(gate) ∘ up`, same shapes.
    #[fusion(dtype = gate, shape = gate)]
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let s = Self::sigmoid(gate.clone());
        Self::float_mul(Self::float_mul(gate, s), up)
    }

    /// `(dgate, dup)` of [`BlockOps::swiglu`] under the gradient `dy`.
    #[fusion(meta = |gate, up, _dy| (gate.clone(), up.clone()))]
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let s = Self::sigmoid(gate.clone());
        let silu = Self::float_mul(gate.clone(), s.clone());
        // σ(g)(1 + g(1 − σ(g))) = σ(g) + silu(g)(1 − σ(g))
        let one_minus = Self::float_add_scalar(Self::float_neg(s.clone()), 1.0f32.into());
        let dsilu = Self::float_add(s, Self::float_mul(silu.clone(), one_minus));
        let dg = Self::float_mul(Self::float_mul(dy.clone(), up), dsilu);
        let du = Self::float_mul(dy, silu);
        (dg, du)
    }

    /// `gelu_tanh(gate) ∘ up`, same shapes: GeGLU (Shazeer 2020) with GELU's tanh
    /// approximation (Gemma's `gelu_pytorch_tanh`), `gelu_tanh(g) = ½ g (1 + tanh(β (g + κ g³)))`,
    /// `β = √(2/π)`, `κ = 0.044715`.
    #[fusion(dtype = gate, shape = gate)]
    fn geglu_tanh(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gelu, _) = gelu_tanh_parts::<Self>(gate);
        Self::float_mul(gelu, up)
    }

    /// `(dgate, dup)` of [`BlockOps::geglu_tanh`] under the gradient `dy`.
    #[fusion(meta = |gate, up, _dy| (gate.clone(), up.clone()))]
    fn geglu_tanh_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (gelu, t) = gelu_tanh_parts::<Self>(gate.clone());
        // gelu'(g) = ½ (1 + t) + ½ g (1 − t²) β (1 + 3κ g²)
        let g2 = Self::float_mul(gate.clone(), gate.clone());
        let inner = Self::float_mul_scalar(
            Self::float_add_scalar(
                Self::float_mul_scalar(g2, (3.0 * GELU_KAPPA).into()),
                1.0f32.into(),
            ),
            GELU_BETA.into(),
        );
        let one_minus_t2 = Self::float_add_scalar(
            Self::float_neg(Self::float_mul(t.clone(), t.clone())),
            1.0f32.into(),
        );
        let half_one_plus_t =
            Self::float_mul_scalar(Self::float_add_scalar(t, 1.0f32.into()), 0.5f32.into());
        let dgelu = Self::float_add(
            half_one_plus_t,
            Self::float_mul_scalar(
                Self::float_mul(Self::float_mul(gate, one_minus_t2), inner),
                0.5f32.into(),
            ),
        );
        let dg = Self::float_mul(Self::float_mul(dy.clone(), up), dgelu);
        let du = Self::float_mul(dy, gelu);
        (dg, du)
    }

    /// Rotary embedding, HF's `rotate_half` form: `x ∘ cos + [−x₂, x₁] ∘ sin` for `x`
    /// `[b, h, t, d]` and tables `[t, w]`, on the leading `w ≤ d` of each head (the rest passed
    /// through). With `transpose`, the adjoint `dy ∘ cos + [(dy ∘ sin)₂, −(dy ∘ sin)₁]` (the
    /// input gradient of the rotation).
    #[fusion(dtype = x, shape = x)]
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let d = x.shape().as_slice().to_vec();
        let (t, full) = (d[2], d[3]);
        let w = cos.shape().as_slice()[1];
        let lead: Vec<Slice> = d[..3].iter().map(|&n| (0..n).into()).collect();
        let cols = |x: FloatTensor<Self>, r: std::ops::Range<usize>| {
            let mut s = lead.clone();
            s.push(r.into());
            Self::float_slice(x, &s)
        };
        if w < full {
            // The rotated leading part, then the rest as it is.
            let rotated = Self::rope(cols(x.clone(), 0..w), cos, sin, transpose);
            return Self::float_cat(vec![rotated, cols(x, w..full)], 3);
        }
        let shape = Shape::new([d[0], d[1], t, w]);
        let table = |c: FloatTensor<Self>| {
            Self::float_expand(
                Self::float_reshape(c, Shape::new([1, 1, t, w])),
                shape.clone(),
            )
        };
        let (cos, sin) = (table(cos), table(sin));
        let half = |x: FloatTensor<Self>, i: usize| cols(x, i * w / 2..(i + 1) * w / 2);
        if transpose {
            let ys = Self::float_mul(x.clone(), sin);
            let rotated =
                Self::float_cat(vec![half(ys.clone(), 1), Self::float_neg(half(ys, 0))], 3);
            Self::float_add(Self::float_mul(x, cos), rotated)
        } else {
            let rotated = Self::float_cat(
                vec![Self::float_neg(half(x.clone(), 1)), half(x.clone(), 0)],
                3,
            );
            Self::float_add(Self::float_mul(x, cos), Self::float_mul(rotated, sin))
        }
    }
}

/// `β = √(2/π)` of GELU's tanh approximation (PyTorch's `M_SQRT2 * M_2_SQRTPI * 0.5`).
pub(crate) const GELU_BETA: f32 = 0.797_884_6;
/// `κ` of GELU's tanh approximation.
pub(crate) const GELU_KAPPA: f32 = 0.044_715;

/// `(gelu_tanh(g), t)` with `t = tanh(β (g + κ g³))`.
fn gelu_tanh_parts<B: Backend>(g: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let g3 = B::float_mul(B::float_mul(g.clone(), g.clone()), g.clone());
    let arg = B::float_mul_scalar(
        B::float_add(g.clone(), B::float_mul_scalar(g3, GELU_KAPPA.into())),
        GELU_BETA.into(),
    );
    let t = B::float_tanh(arg);
    let gelu = B::float_mul(
        B::float_mul_scalar(g, 0.5f32.into()),
        B::float_add_scalar(t.clone(), 1.0f32.into()),
    );
    (gelu, t)
}

/// The shape and the width of the last dimension.
pub(crate) fn last_dim(x: &impl TensorMetadata) -> (Shape, usize) {
    let shape = x.shape();
    let n = *shape
        .as_slice()
        .last()
        .expect("a tensor of at least one dimension");
    (shape, n)
}

/// `[rows, n]` of a shape whose last dimension is `n`.
fn shape_2d(shape: &Shape, n: usize) -> Shape {
    Shape::new([shape.num_elements() / n.max(1), n])
}

/// `1 / √(mean(x²) + ε)` per row, `[rows, n]` (expanded).
fn inv_rms<B: Backend>(x: FloatTensor<B>, eps: f32) -> FloatTensor<B> {
    let (shape, n) = last_dim(&x);
    let s2 = shape_2d(&shape, n);
    let x = B::float_reshape(x, s2.clone());
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x), 1);
    let r = B::float_recip(B::float_sqrt(B::float_add_scalar(ms, eps.into())));
    B::float_expand(r, s2)
}

/// RMSNorm over the last dimension: `w ∘ x / √(mean(x²) + ε)`.
///
/// - `x`: `[..., n]`; `w`: `[n]`
/// - returns `[..., n]`
///
/// Differentiable in `x` and `w`.
///
/// # Panics
/// If `w` is not `[n]`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, w: Tensor<1>, eps: f32) -> Tensor<D> {
    let n = x.dims()[D - 1];
    assert_eq!(
        w.dims(),
        [n],
        "rms_norm: the weight must be [{n}], the input's last dimension"
    );
    Tensor::from_dispatch(<Dispatch as BlockOps>::rms_norm(
        x.into_dispatch(),
        w.into_dispatch(),
        eps,
    ))
}

/// SwiGLU's gate `silu(gate) ∘ up` (Shazeer 2020), element-wise.
///
/// Differentiable in both inputs.
///
/// # Panics
/// If the shapes differ.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate and up shapes differ");
    Tensor::from_dispatch(<Dispatch as BlockOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// GeGLU's gate with GELU's tanh approximation, `gelu_tanh(gate) ∘ up` (Shazeer 2020; Gemma's
/// `gelu_pytorch_tanh` MLP), element-wise.
///
/// Differentiable in both inputs.
///
/// # Panics
/// If the shapes differ.
pub fn geglu_tanh<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(
        gate.dims(),
        up.dims(),
        "geglu_tanh: gate and up shapes differ"
    );
    Tensor::from_dispatch(<Dispatch as BlockOps>::geglu_tanh(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// Rotary position embedding in HF LLaMA's `rotate_half` form:
/// `x ∘ cos + [−x₂, x₁] ∘ sin`, on the leading `w` of each head where the tables are `w` wide
/// (a partial rotary factor, as Phi-3's; the trailing `d − w` pass through).
///
/// - `x`: `[batch, heads, len, d]`; `cos`, `sin`: `[len, w]`, `w ≤ d` even (constants: no
///   gradient)
/// - returns `[batch, heads, len, d]`
///
/// Differentiable in `x`.
///
/// # Panics
/// If the tables are not `[len, w]` with `w` even and at most `d`.
pub fn rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    let [_, _, t, d] = x.dims();
    let [tc, w] = cos.dims();
    assert!(
        tc == t && sin.dims() == [t, w] && w % 2 == 0 && w > 0 && w <= d,
        "rope: tables {:?} / {:?} for an input of {t} positions of width {d} (an even width \
         up to {d} is rotated)",
        cos.dims(),
        sin.dims()
    );
    Tensor::from_dispatch(<Dispatch as BlockOps>::rope(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        false,
    ))
}
