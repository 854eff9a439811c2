//! Fused linear + cross-entropy: the loss of a language-model head without keeping its logits.
//!
//! For rows `x_i` `[n, h]`, a head `W` `[v, h]`, targets `t_i` and row weights `a_i` (1 for a
//! trained position, 0 for an ignored one), the per-row loss is
//! `a_i · (logsumexp(x_i·Wᵀ) − (x_i·Wᵀ)[t_i])` and its input gradient is
//! `a_i · (softmax(x_i·Wᵀ) − onehot(t_i)) · W`. The logits of a vocabulary of 32 000 to
//! 150 000 tokens are the largest tensor of a training step; computed chunk by chunk with the
//! input gradient in the same pass (the approach of Liger-Kernel and Unsloth), the step never
//! holds more than one chunk of them and autodiff keeps only the `[n, h]` gradient. As the loss
//! is a scalar function of independent rows, the backward pass only scales that gradient by the
//! upstream one, row by row, which is exact.

use burn::backend::{
    Backend, Dispatch, Shape, TensorMetadata, backend_extension,
    tensor::{FloatTensor, IndexingUpdateOp, IntTensor},
};
use burn::tensor::{Int, Tensor};

/// The fused linear + cross-entropy ops (see the module docs). Flex has a fused host kernel;
/// other backends use the default bodies, composed of the backend's own ops; Autodiff keeps
/// the input gradient from the forward pass.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait LinearCrossEntropyOps: Backend {
    /// Per-row losses `[n]` of rows `x` `[n, h]` under head `w` `[v, h]`, targets `[n]` (valid
    /// ids) and row weights `[n]`.
    #[fusion(default)]
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        loss_and_dlogits::<Self>(x, w, targets, weights).0
    }

    /// `(losses, dx)`: the per-row losses `[n]` and the input gradient `[n, h]` of each row's
    /// loss, from one pass over the logits.
    #[fusion(default)]
    fn linear_cross_entropy_with_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (loss, dlogits) = loss_and_dlogits::<Self>(x, w.clone(), targets, weights);
        (loss, Self::float_matmul(dlogits, w))
    }

    /// The head's gradient `[v, h]` of `Σ_i weights_i · loss_i` (the weights carry the upstream
    /// gradient): `Σ_i dlogits_iᵀ · x_i`.
    #[fusion(default)]
    fn linear_cross_entropy_weight_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (_, dlogits) = loss_and_dlogits::<Self>(x.clone(), w, targets, weights);
        Self::float_matmul(Self::float_transpose(dlogits), x)
    }
}

/// `[rows, cols]` of a 2-D tensor.
///
/// # Panics
/// If `t` is not 2-D.
pub(crate) fn dims2(t: &impl TensorMetadata, what: &str) -> [usize; 2] {
    let s = t.shape();
    let d = s.as_slice();
    assert_eq!(
        d.len(),
        2,
        "linear_cross_entropy: `{what}` must be 2-D, found {d:?}"
    );
    [d[0], d[1]]
}

/// The composite path: per-row losses `[n]` and `dlogits` `[n, v]` with all the logits.
fn loss_and_dlogits<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    targets: IntTensor<B>,
    weights: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [n, _] = dims2(&x, "x");
    let [v, _] = dims2(&w, "w");
    // Backend ops take operands of one shape: columns are expanded explicitly.
    let wide = |t: FloatTensor<B>| B::float_expand(t, Shape::new([n, v]));
    let logits = B::float_matmul(x, B::float_transpose(w));
    let max = B::float_max_dim(logits.clone(), 1);
    let z = B::float_sub(logits, wide(max));
    let e = B::float_exp(z.clone());
    let sum = B::float_sum_dim(e.clone(), 1);
    let t = B::int_reshape(targets, Shape::new([n, 1]));
    let picked = B::float_gather(1, z, t.clone());
    let a = B::float_reshape(weights, Shape::new([n, 1]));
    let loss = B::float_mul(B::float_sub(B::float_log(sum.clone()), picked), a.clone());
    let p = B::float_mul(B::float_div(e, wide(sum)), wide(a.clone()));
    let dlogits = B::float_scatter(1, p, t, B::float_neg(a), IndexingUpdateOp::Add);
    (B::float_reshape(loss, Shape::new([n])), dlogits)
}

/// Per-row cross-entropy losses `[n]` of the logits `x · wᵀ`, never materialising more than a
/// chunk of them on backends with a fused kernel (see the module docs).
///
/// - `x`: `[n, h]` rows (hidden states)
/// - `w`: `[v, h]` head weight (PyTorch layout)
/// - `targets`: `[n]` token ids in `0..v` (any valid id where `weights` is 0)
/// - `weights`: `[n]` row weights, 1 for a trained position and 0 for an ignored one
///
/// Differentiable in `x` and `w` on an autodiff device.
///
/// # Panics
/// If the shapes disagree.
pub fn linear_cross_entropy(
    x: Tensor<2>,
    w: Tensor<2>,
    targets: Tensor<1, Int>,
    weights: Tensor<1>,
) -> Tensor<1> {
    let ([n, h], [v, hw]) = (x.dims(), w.dims());
    assert_eq!(
        h, hw,
        "linear_cross_entropy: x has {h} features, the head weight [{v}, {hw}] expects {hw}"
    );
    assert_eq!(
        (targets.dims(), weights.dims()),
        ([n], [n]),
        "linear_cross_entropy: targets and weights must be [{n}]"
    );
    Tensor::from_dispatch(<Dispatch as LinearCrossEntropyOps>::linear_cross_entropy(
        x.into_dispatch(),
        w.into_dispatch(),
        targets.into_dispatch(),
        weights.into_dispatch(),
    ))
}
