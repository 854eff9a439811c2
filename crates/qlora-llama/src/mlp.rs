//! The SwiGLU MLP (Shazeer 2020): `down(silu(gate(x)) ⊙ up(x))`.

use burn::module::Module;
use burn::tensor::Tensor;
use qlora_fused::swiglu;
use qlora_nn::AdaptedLinear;

/// `mlp` of a decoder layer: `gate_proj`, `up_proj`, `down_proj` (HF names).
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `[hidden] → [intermediate]`.
    pub gate_proj: AdaptedLinear,
    /// `[hidden] → [intermediate]`.
    pub up_proj: AdaptedLinear,
    /// `[intermediate] → [hidden]`.
    pub down_proj: AdaptedLinear,
}

impl LlamaMlp {
    /// - `x`: `[batch, len, hidden]`
    /// - returns `[batch, len, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(swiglu(gate, self.up_proj.forward(x)))
    }
}
