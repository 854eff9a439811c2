//! One pre-norm decoder layer: `h = x + attn(norm₁(x))`, `y = h + mlp(norm₂(h))`.

use burn::module::Module;
use burn::tensor::{Int, Tensor};

use crate::{KvCache, LlamaAttention, LlamaMlp, RmsNorm};

/// `model.layers.N` (HF names).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    /// Self-attention.
    pub self_attn: LlamaAttention,
    /// SwiGLU MLP.
    pub mlp: LlamaMlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

impl LlamaDecoderLayer {
    /// - `x`: `[batch, len, hidden]`; `cos`/`sin`: RoPE tables `[len, head_dim]`
    /// - `segments`: for a padding-free batch, `[batch, len]` the row position of each
    ///   token's sample start (attention stays inside samples); `None` otherwise
    /// - returns `[batch, len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        let h = self.attention_residual(x, cos, sin, cache, segments);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }

    /// `h = x + attn(norm₁(x))`, `[batch, len, hidden]`.
    fn attention_residual(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, cache, segments)
    }

    /// [`LlamaDecoderLayer::forward`] for a pass that reads only the output's gradient, never
    /// its values (a checkpointed layer's recomputation, [`qlora_nn::recomputing`]): the MLP's
    /// `down_proj` feeds the residual sum alone, so its NF4 product is not computed again
    /// (about a quarter of the layer's products); every gradient is the same.
    pub fn forward_output_unused(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        let h = self.attention_residual(x, cos, sin, None, segments);
        h.clone()
            + self
                .mlp
                .forward_output_unused(self.post_attention_layernorm.forward(h))
    }
}
