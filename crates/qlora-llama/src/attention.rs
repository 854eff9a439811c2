//! Grouped-query self-attention with RoPE, a causal mask and an optional [`KvCache`], through
//! [`qlora_fused::causal_attention`].

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use qlora_fused::{causal_attention, causal_attention_segmented, causal_attention_windowed};
use qlora_nn::AdaptedLinear;

use crate::{KvCache, RmsNorm, Rope};

/// `self_attn` of a decoder layer: `q_proj`, `k_proj`, `v_proj` (or Phi-3's fused `qkv_proj`),
/// `o_proj` (HF names), and Qwen3's and Gemma 3's per-head `q_norm`, `k_norm`.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `[hidden] → [heads · head_dim]` (absent where `qkv_proj` holds it).
    pub q_proj: Option<AdaptedLinear>,
    /// `[hidden] → [kv_heads · head_dim]` (absent where `qkv_proj` holds it).
    pub k_proj: Option<AdaptedLinear>,
    /// `[hidden] → [kv_heads · head_dim]` (absent where `qkv_proj` holds it).
    pub v_proj: Option<AdaptedLinear>,
    /// Phi-3's `[hidden] → [(heads + 2 · kv_heads) · head_dim]`: q, then k, then v.
    pub qkv_proj: Option<AdaptedLinear>,
    /// `[heads · head_dim] → [hidden]`.
    pub o_proj: AdaptedLinear,
    /// RMSNorm over each query head, `[head_dim]`, before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm over each key head, `[head_dim]`, before RoPE (Qwen3, Gemma 3).
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Each query sees the last this many keys up to its own (Mistral, Gemma 3's sliding
    /// layers); `None`: all of them.
    pub sliding_window: Option<usize>,
    /// The scale of the scores `q·k` (`head_dim^-½`, Gemma 3's `query_pre_attn_scalar^-½`).
    pub scale: f64,
}

impl LlamaAttention {
    /// The projections that exist, by HF name, in HF order.
    pub fn linears(&self) -> Vec<(&'static str, &AdaptedLinear)> {
        [
            ("q_proj", &self.q_proj),
            ("k_proj", &self.k_proj),
            ("v_proj", &self.v_proj),
            ("qkv_proj", &self.qkv_proj),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.as_ref().map(|l| (n, l)))
        .chain([("o_proj", &self.o_proj)])
        .collect()
    }

    /// As [`LlamaAttention::linears`], mutable.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut AdaptedLinear)> {
        [
            ("q_proj", &mut self.q_proj),
            ("k_proj", &mut self.k_proj),
            ("v_proj", &mut self.v_proj),
            ("qkv_proj", &mut self.qkv_proj),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.as_mut().map(|l| (n, l)))
        .chain([("o_proj", &mut self.o_proj)])
        .collect()
    }

    /// - `x`: `[batch, len, hidden]`
    /// - `cos`, `sin`: RoPE tables of the positions of `x`, `[len, rotary_dim]` (a partial
    ///   rotary factor rotates the leading `rotary_dim` of each head only)
    /// - `cache`: past keys/values of this layer (`layer` is its index), extended in place
    /// - returns `[batch, len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: Option<(&mut KvCache, usize)>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // `[b, t, n · d]` → `[b, n, t, d]`, each head normed first where the family does.
        let heads = |y: Tensor<3>, n: usize, norm: &Option<RmsNorm>| {
            let y = y.reshape([b, t, n, d]);
            let y = match norm {
                Some(norm) => norm.forward(y),
                None => y,
            };
            y.swap_dims(1, 2)
        };
        let (q, k, v) = match &self.qkv_proj {
            Some(qkv) => {
                let y = qkv.forward(x);
                let (qw, kvw) = (h * d, kvh * d);
                (
                    y.clone().narrow(2, 0, qw),
                    y.clone().narrow(2, qw, kvw),
                    y.narrow(2, qw + kvw, kvw),
                )
            }
            None => {
                let proj = |l: &Option<AdaptedLinear>| {
                    l.as_ref()
                        .expect("q_proj, k_proj and v_proj, or qkv_proj")
                        .forward(x.clone())
                };
                (proj(&self.q_proj), proj(&self.k_proj), proj(&self.v_proj))
            }
        };
        let q = heads(q, h, &self.q_norm);
        let k = heads(k, kvh, &self.k_norm);
        let v = heads(v, kvh, &None);
        // RoPE on the leading `rotary_dim` of each head (the tables' width), the rest as it is.
        let (q, k) = (Rope::apply(q, cos, sin), Rope::apply(k, cos, sin));
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        // Causal, aligned bottom-right: query i (of t) sees keys up to past_len + i; each kv
        // head serves its group of query heads (no repeat_kv copy); the backward pass keeps
        // no scores.
        let scale = self.scale as f32;
        let out = match (segments, self.sliding_window) {
            (Some(starts), window) => {
                causal_attention_segmented(q, k, v, starts.clone(), scale, window)
            }
            (None, Some(w)) => causal_attention_windowed(q, k, v, scale, w),
            (None, None) => causal_attention(q, k, v, scale),
        };
        let out = out.swap_dims(1, 2).reshape([b, t, h * d]);
        self.o_proj.forward(out)
    }
}
