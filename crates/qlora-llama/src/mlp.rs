//! The gated MLP (Shazeer 2020): `down(act(gate(x)) ⊙ up(x))`, SwiGLU (`silu`) or Gemma's
//! GeGLU (tanh-GELU), with gate and up as two linears or as Phi-3's one `gate_up_proj` (gate
//! first).

use burn::module::Module;
use burn::tensor::Tensor;
use qlora_fused::{geglu_tanh, swiglu};
use qlora_nn::AdaptedLinear;

use crate::HiddenAct;

/// `mlp` of a decoder layer: `gate_proj`, `up_proj` (or Phi-3's `gate_up_proj`), `down_proj`
/// (HF names).
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `[hidden] → [intermediate]` (absent where `gate_up_proj` holds it).
    pub gate_proj: Option<AdaptedLinear>,
    /// `[hidden] → [intermediate]` (absent where `gate_up_proj` holds it).
    pub up_proj: Option<AdaptedLinear>,
    /// Phi-3's `[hidden] → [2 · intermediate]`: gate, then up.
    pub gate_up_proj: Option<AdaptedLinear>,
    /// `[intermediate] → [hidden]`.
    pub down_proj: AdaptedLinear,
    /// The gate's activation.
    #[module(skip)]
    pub act: HiddenAct,
}

impl LlamaMlp {
    /// The projections that exist, by HF name, in HF order.
    pub fn linears(&self) -> Vec<(&'static str, &AdaptedLinear)> {
        [
            ("gate_proj", &self.gate_proj),
            ("up_proj", &self.up_proj),
            ("gate_up_proj", &self.gate_up_proj),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.as_ref().map(|l| (n, l)))
        .chain([("down_proj", &self.down_proj)])
        .collect()
    }

    /// As [`LlamaMlp::linears`], mutable.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut AdaptedLinear)> {
        [
            ("gate_proj", &mut self.gate_proj),
            ("up_proj", &mut self.up_proj),
            ("gate_up_proj", &mut self.gate_up_proj),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.as_mut().map(|l| (n, l)))
        .chain([("down_proj", &mut self.down_proj)])
        .collect()
    }

    /// - `x`: `[batch, len, hidden]`
    /// - returns `[batch, len, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward(self.activation(x))
    }

    /// [`LlamaMlp::forward`] for a pass that reads only the output's gradient (a checkpointed
    /// layer's recomputation): `down_proj`'s NF4 product is not computed
    /// ([`AdaptedLinear::forward_output_unused`]).
    pub fn forward_output_unused(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward_output_unused(self.activation(x))
    }

    /// `act(gate(x)) ⊙ up(x)`: `[batch, len, hidden]` → `[batch, len, intermediate]`.
    fn activation(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match &self.gate_up_proj {
            Some(l) => {
                let y = l.forward(x);
                let f = y.dims()[2] / 2;
                (y.clone().narrow(2, 0, f), y.narrow(2, f, f))
            }
            None => {
                let proj = |l: &Option<AdaptedLinear>| {
                    l.as_ref()
                        .expect("gate_proj and up_proj, or gate_up_proj")
                        .forward(x.clone())
                };
                (proj(&self.gate_proj), proj(&self.up_proj))
            }
        };
        match self.act {
            HiddenAct::Silu => swiglu(gate, up),
            HiddenAct::GeluTanh => geglu_tanh(gate, up),
        }
    }
}
