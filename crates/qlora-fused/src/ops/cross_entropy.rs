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
//!
//! The default bodies (what CubeCL runtimes run) are composed of the backend's ops over chunks
//! of rows, [`CHUNK_LOGITS`] logits a chunk (a few buffers of that size live at once: the
//! logits, their exponentials, the gradient), so they never hold the whole `[tokens, vocab]`
//! logits either; Flex has its own fused host kernel.

use burn::backend::{
    Backend, DType, Dispatch, FloatDType, Shape, TensorMetadata, backend_extension,
    tensor::{FloatTensor, IndexingUpdateOp, IntTensor},
};
use burn::tensor::{Int, Tensor};

/// The fused linear + cross-entropy ops (see the module docs). Flex has a fused host kernel;
/// other backends use the default bodies, composed of the backend's own ops chunk by chunk;
/// Autodiff keeps the input gradient from the forward pass.
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
        chunked::<Self>(x, w, targets, weights, CHUNK_LOGITS, Want::Loss).0
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
        let (loss, dx) = chunked::<Self>(x, w, targets, weights, CHUNK_LOGITS, Want::InputGrad);
        (loss, dx.expect("asked for"))
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
        chunked::<Self>(x, w, targets, weights, CHUNK_LOGITS, Want::WeightGrad)
            .1
            .expect("asked for")
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

/// The most logits the composite path holds at a time (128 MiB of f32): rows are taken in
/// chunks of `CHUNK_LOGITS / vocab`.
pub(crate) const CHUNK_LOGITS: usize = 1 << 25;

/// What [`chunked`] computes beside the losses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    /// The losses only.
    Loss,
    /// The input gradient `[n, h]`.
    InputGrad,
    /// The head's gradient `[v, h]` (the losses are then not assembled: `[0]`).
    WeightGrad,
}

/// The composite path over chunks of at most `budget` logits: the per-row losses `[n]` and, as
/// `want` says, the input gradient or the head's gradient.
pub(crate) fn chunked<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    targets: IntTensor<B>,
    weights: FloatTensor<B>,
    budget: usize,
    want: Want,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let ([n, h], [v, _]) = (dims2(&x, "x"), dims2(&w, "w"));
    let rows = (budget / v.max(1)).clamp(1, n.max(1));
    if rows >= n {
        let (loss, dlogits) = loss_and_dlogits::<B>(x.clone(), w.clone(), targets, weights);
        let grad = match want {
            Want::Loss => None,
            Want::InputGrad => Some(B::float_matmul(dlogits, w)),
            Want::WeightGrad => Some(B::float_matmul(B::float_transpose(dlogits), x)),
        };
        return (loss, grad);
    }
    let (mut losses, mut dxs, mut dw) = (Vec::new(), Vec::new(), None);
    for start in (0..n).step_by(rows) {
        let r = start..(start + rows).min(n);
        let xc = B::float_slice(x.clone(), &[r.clone().into(), (0..h).into()]);
        let (loss, dlogits) = loss_and_dlogits::<B>(
            xc.clone(),
            w.clone(),
            B::int_slice(targets.clone(), &[r.clone().into()]),
            B::float_slice(weights.clone(), &[r.into()]),
        );
        match want {
            Want::Loss => losses.push(loss),
            Want::InputGrad => {
                losses.push(loss);
                dxs.push(B::float_matmul(dlogits, w.clone()));
            }
            Want::WeightGrad => {
                // Summed in f32 whatever the float type, rounded to it once at the end.
                let part = B::float_matmul(B::float_transpose(dlogits), xc);
                let part = if part.dtype() == DType::F32 {
                    part
                } else {
                    B::float_cast(part, FloatDType::F32)
                };
                dw = Some(match dw {
                    None => part,
                    Some(acc) => B::float_add(acc, part),
                });
            }
        }
    }
    let grad = match want {
        Want::Loss => None,
        Want::InputGrad => Some(B::float_cat(dxs, 0)),
        Want::WeightGrad => dw.map(|g| {
            if g.dtype() == w.dtype() {
                g
            } else {
                B::float_cast(g, w.dtype().into())
            }
        }),
    };
    let loss = if losses.is_empty() {
        B::float_zeros(Shape::new([0]), &x.device(), x.dtype().into())
    } else {
        B::float_cat(losses, 0)
    };
    (loss, grad)
}

/// The composite path on one chunk: per-row losses `[n]` and `dlogits` `[n, v]`.
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

#[cfg(test)]
mod tests {
    //! The chunked composite path (what CubeCL runtimes run) on Flex: chunks of every size give
    //! the one-chunk composite's losses and gradients, and those agree with Flex's fused kernel.
    use super::*;
    use burn::backend::{Flex, IntDType, TensorData, flex::FlexTensor, ops::IntTensorOps};

    fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        qlora_testenv::random::uniform(len, seed)
            .into_iter()
            .map(|x| x * scale)
            .collect()
    }

    fn f32s(t: FlexTensor) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 values")
    }

    #[test]
    fn chunks_of_any_size_give_the_one_chunk_results() {
        let (n, h, v) = (37, 9, 50);
        let x = || FlexTensor::from_data(TensorData::new(values(n * h, 1, 1.0), [n, h]));
        let w = || FlexTensor::from_data(TensorData::new(values(v * h, 2, 0.5), [v, h]));
        let t = || {
            let ids: Vec<i64> = (0..n).map(|i| (i * 13 % v) as i64).collect();
            Flex::int_cast(
                FlexTensor::from_data(TensorData::new(ids, [n])),
                IntDType::I64,
            )
        };
        let a = || {
            let a: Vec<f32> = (0..n).map(|i| [1.0, 0.0, 0.5][i % 3]).collect();
            FlexTensor::from_data(TensorData::new(a, [n]))
        };
        let run = |budget, want| {
            let (loss, grad) = chunked::<Flex>(x(), w(), t(), a(), budget, want);
            (f32s(loss), grad.map(f32s))
        };
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}: lengths");
            for (e, (g, r)) in a.iter().zip(b).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                    "{what}[{e}]: {g} vs {r}"
                );
            }
        };
        let (loss1, dx1) = run(usize::MAX, Want::InputGrad);
        let (_, dw1) = run(usize::MAX, Want::WeightGrad);
        let (dx1, dw1) = (dx1.unwrap(), dw1.unwrap());
        // Budgets of one row, a few rows that do not divide 37, and all but one row; the GEMMs
        // of another height may sum in another order, so f32 rounding apart.
        for rows in [1, 5, 8, n - 1] {
            let budget = rows * v;
            let what = format!("{rows} rows a chunk");
            let (loss, none) = run(budget, Want::Loss);
            assert!(none.is_none());
            close(&loss, &loss1, &format!("{what}: losses"));
            let (loss, dx) = run(budget, Want::InputGrad);
            close(&loss, &loss1, &format!("{what}: losses with dx"));
            close(&dx.unwrap(), &dx1, &format!("{what}: dx"));
            let dw = run(budget, Want::WeightGrad).1.unwrap();
            close(&dw, &dw1, &format!("{what}: dw"));
        }
        // Flex's fused kernel computes the same (its own order of sums; f32 products: 37 rows
        // are below its bf16 threshold whatever the process-wide tier).
        let (loss, dx) =
            <Flex as LinearCrossEntropyOps>::linear_cross_entropy_with_grad(x(), w(), t(), a());
        close(&f32s(loss), &loss1, "fused loss");
        close(&f32s(dx), &dx1, "fused dx");
        let dw =
            <Flex as LinearCrossEntropyOps>::linear_cross_entropy_weight_grad(x(), w(), t(), a());
        close(&f32s(dw), &dw1, "fused dw");
    }
}
