//! RMSNorm (Zhang & Sennrich 2019) as HF LLaMA computes it:
//! `y = w · x / sqrt(mean(x²) + ε)` over the last dimension, through
//! [`qlora_fused::rms_norm`] (one pass forward and backward); Gemma's scales by `1 + w`
//! (its weights are stored as offsets from one).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

/// Root-mean-square layer norm with a learned (here frozen) per-channel weight.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `weight`, `[hidden]` (HF name).
    pub weight: Param<Tensor<1>>,
    /// ε added to the mean square.
    pub eps: f64,
    /// The scale is `1 + weight` (Gemma's `Gemma3RMSNorm`), computed in f32 as transformers
    /// does.
    pub unit_offset: bool,
}

impl RmsNorm {
    /// A frozen norm with the given weight.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            eps,
            unit_offset: false,
        }
    }

    /// The norm scaling by `1 + weight` when `unit_offset` is set (Gemma).
    pub fn with_unit_offset(mut self, unit_offset: bool) -> Self {
        self.unit_offset = unit_offset;
        self
    }

    /// - `x`: `[..., hidden]`
    /// - returns `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.weight.val();
        let w = if self.unit_offset {
            w.add_scalar(1.0)
        } else {
            w
        };
        qlora_fused::rms_norm(x, w, self.eps as f32)
    }
}
