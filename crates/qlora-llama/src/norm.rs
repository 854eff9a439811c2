//! RMSNorm (Zhang & Sennrich 2019) as HF LLaMA computes it:
//! `y = w · x / sqrt(mean(x²) + ε)` over the last dimension, through
//! [`qlora_fused::rms_norm`] (one pass forward and backward).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

/// Root-mean-square layer norm with a learned (here frozen) per-channel weight.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `weight`, `[hidden]` (HF name).
    pub weight: Param<Tensor<1>>,
    /// ε added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// A frozen norm with the given weight.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            eps,
        }
    }

    /// - `x`: `[..., hidden]`
    /// - returns `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        qlora_fused::rms_norm(x, self.weight.val(), self.eps as f32)
    }
}
