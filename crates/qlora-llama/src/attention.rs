//! Grouped-query self-attention with RoPE, a causal mask and an optional [`KvCache`].

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use qlora_nn::AdaptedLinear;

use crate::{KvCache, Rope};

/// `self_attn` of a decoder layer: `q_proj`, `k_proj`, `v_proj`, `o_proj` (HF names).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `[hidden] → [heads · head_dim]`.
    pub q_proj: AdaptedLinear,
    /// `[hidden] → [kv_heads · head_dim]`.
    pub k_proj: AdaptedLinear,
    /// `[hidden] → [kv_heads · head_dim]`.
    pub v_proj: AdaptedLinear,
    /// `[heads · head_dim] → [hidden]`.
    pub o_proj: AdaptedLinear,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl LlamaAttention {
    /// - `x`: `[batch, len, hidden]`
    /// - `cos`, `sin`: RoPE tables of the positions of `x`, `[len, head_dim]`
    /// - `cache`: past keys/values of this layer (`layer` is its index), extended in place
    /// - returns `[batch, len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let q = Rope::apply(heads(self.q_proj.forward(x.clone()), h), cos, sin);
        let k = Rope::apply(heads(self.k_proj.forward(x.clone()), kvh), cos, sin);
        let v = heads(self.v_proj.forward(x), kvh);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let (k, v) = (repeat_kv(k, h / kvh), repeat_kv(v, h / kvh));
        // Causal, aligned bottom-right: query i (of t) sees keys up to past_len + i.
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: t > 1,
        };
        let out = attention(q, k, v, None, None, options);
        let out = out.swap_dims(1, 2).reshape([b, t, h * d]);
        self.o_proj.forward(out)
    }
}

/// `[b, kv_heads, s, d]` → `[b, kv_heads · groups, s, d]`, each kv head repeated for its
/// group of query heads (transformers' `repeat_kv`).
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, kvh, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, groups, s, d])
        .reshape([b, kvh * groups, s, d])
}
