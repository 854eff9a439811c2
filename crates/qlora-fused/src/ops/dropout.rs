//! Dropout whose mask is a function of a seed, so that the backward pass recomputes it instead
//! of keeping it.
//!
//! Burn's `Dropout` multiplies by a random mask tensor, which autodiff keeps for the backward
//! pass: with LoRA dropout on every adapted linear of a model that is one `[tokens, in]` f32
//! mask per linear per step (about 600 MB for SmolLM2-135M at 1,024 tokens), and its random
//! draws dominated the step on the CPU. Here the mask of element `i` is drawn from `(seed, i)`
//! alone: the forward pass and the backward pass draw the same one, and nothing but the seed is
//! kept. Flex computes it with a counter-based generator (SplitMix64 of the seed and the index)
//! in parallel; other backends reseed their own generator with the seed and draw the mask with
//! their own ops, the same in both passes.

use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::tensor::{Distribution, Tensor};

/// The seeded dropout op (see the module docs).
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait DropoutOps: Backend {
    /// `x ∘ mask / (1 − prob)`, `mask` drawn from `seed` (each element kept with probability
    /// `1 − prob`).
    #[fusion(default)]
    fn seeded_dropout(x: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        let mask = mask::<Self>(&x, prob, seed);
        Self::float_mul(x, mask)
    }

    /// The gradient of [`DropoutOps::seeded_dropout`] under `dy`: `dy ∘ mask / (1 − prob)`,
    /// the mask drawn again from `seed`.
    #[fusion(default)]
    fn seeded_dropout_backward(dy: FloatTensor<Self>, prob: f32, seed: u64) -> FloatTensor<Self> {
        let mask = mask::<Self>(&dy, prob, seed);
        Self::float_mul(dy, mask)
    }
}

/// `mask / (1 − prob)` in the shape of `like`, from the backend's generator seeded with `seed`.
pub(crate) fn mask<B: Backend>(like: &FloatTensor<B>, prob: f32, seed: u64) -> FloatTensor<B> {
    let device = like.device();
    B::seed(&device, seed);
    let keep = 1.0 - prob as f64;
    let m = B::float_random(
        like.shape(),
        Distribution::Bernoulli(keep),
        &device,
        like.dtype().into(),
    );
    B::float_mul_scalar(m, ((1.0 / keep) as f32).into())
}

/// Dropout of `x` with probability `prob`, its mask drawn from `seed`: the same `seed` gives
/// the same mask, and the backward pass draws it again rather than keeping it. Differentiable
/// in `x`.
///
/// # Panics
/// If `prob` is not in `[0, 1)`.
pub fn seeded_dropout<const D: usize>(x: Tensor<D>, prob: f64, seed: u64) -> Tensor<D> {
    assert!(
        (0.0..1.0).contains(&prob),
        "dropout probability {prob} is not in [0, 1)"
    );
    if prob == 0.0 {
        return x;
    }
    Tensor::from_dispatch(<Dispatch as DropoutOps>::seeded_dropout(
        x.into_dispatch(),
        prob as f32,
        seed,
    ))
}
