//! One pre-norm decoder layer: `h = x + attn(norm₁(x))`, `y = h + mlp(norm₂(h))`; Gemma 3's
//! "sandwich" layer norms the outputs too: `h = x + norm₂(attn(norm₁(x)))`,
//! `y = h + norm₄(mlp(norm₃(h)))` (Gemma Team 2025).

use burn::module::Module;
use burn::tensor::{Int, Tensor};

use crate::{KvCache, LlamaAttention, LlamaMlp, RmsNorm};

/// `model.layers.N` (HF names).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    /// Self-attention.
    pub self_attn: LlamaAttention,
    /// Gated MLP.
    pub mlp: LlamaMlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP; with sandwich norms (Gemma 3), the norm of the attention's output.
    pub post_attention_layernorm: RmsNorm,
    /// Gemma 3's norm before the MLP.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma 3's norm of the MLP's output.
    pub post_feedforward_layernorm: Option<RmsNorm>,
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
        self.mlp_residual(h)
    }

    /// `y = h + mlp(norm₂(h))`, or with sandwich norms `h + norm₄(mlp(norm₃(h)))`.
    fn mlp_residual(&self, h: Tensor<3>) -> Tensor<3> {
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => h.clone() + post.forward(self.mlp.forward(pre.forward(h))),
            (None, None) => h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h)),
            _ => panic!("pre_feedforward_layernorm and post_feedforward_layernorm go together"),
        }
    }

    /// `h = x + attn(norm₁(x))` (with sandwich norms `x + norm₂(attn(norm₁(x)))`),
    /// `[batch, len, hidden]`.
    fn attention_residual(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        let a = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            cos,
            sin,
            cache,
            segments,
        );
        if self.pre_feedforward_layernorm.is_some() {
            x + self.post_attention_layernorm.forward(a)
        } else {
            x + a
        }
    }

    /// [`LlamaDecoderLayer::forward`] for a pass that reads only the output's gradient, never
    /// its values (a checkpointed layer's recomputation, [`qlora_nn::recomputing`]): the MLP's
    /// `down_proj` feeds the residual sum alone, so its NF4 product is not computed again
    /// (about a quarter of the layer's products); every gradient is the same. A layer that norms
    /// the MLP's output (Gemma 3) needs that output's values for the norm's gradient: it runs
    /// [`LlamaDecoderLayer::forward`].
    pub fn forward_output_unused(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        if self.post_feedforward_layernorm.is_some() {
            return self.forward(x, cos, sin, None, segments);
        }
        let h = self.attention_residual(x, cos, sin, None, segments);
        h.clone()
            + self
                .mlp
                .forward_output_unused(self.post_attention_layernorm.forward(h))
    }
}
