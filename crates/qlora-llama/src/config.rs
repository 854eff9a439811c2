//! [`LlamaConfig`]: the hyper-parameters of a LLaMA-style model, read from HF `config.json`
//! (transformers 4 and 5 forms) and written back, for the `model_type`s of [`ModelType`].
//!
//! A family enters here when the decoder of `qlora-llama` computes exactly what transformers'
//! modeling file of that family does; a setting of a family that it does not compute (Qwen2's
//! sliding-window layers, for one) is a named error, never ignored.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config_gemma;
use crate::config_refuse;
use crate::layer_types::{self, LayerType};
use crate::rope_config::{read_rope, rotary_dim};
use crate::{LlamaError, RopeConfig, RopeScaling};

/// The `model_type`s whose decoder this crate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// `llama` (`LlamaForCausalLM`): the baseline.
    Llama,
    /// `phi3` (`Phi3ForCausalLM`, Phi-3 and Phi-4-mini): one fused `qkv_proj` and one fused
    /// `gate_up_proj` (LoRA on each fused linear, as PEFT does), RoPE on the first
    /// `partial_rotary_factor` of each head, a sliding window where `sliding_window` is set.
    Phi3,
    /// `qwen2` (`Qwen2ForCausalLM`, Qwen2 and Qwen2.5): biases on q/k/v (not o); sliding
    /// layers from `max_window_layers` on (or as `layer_types` says) where
    /// `use_sliding_window` is set.
    Qwen2,
    /// `mistral` (`MistralForCausalLM`): attention in a sliding window of `sliding_window`
    /// keys (training, prefill and decoding with the cache alike).
    Mistral,
    /// `qwen3` (`Qwen3ForCausalLM`): RMSNorm over each head of q and k before RoPE
    /// (`q_norm`, `k_norm`), `head_dim` independent of the width; sliding layers as Qwen2's.
    Qwen3,
    /// `gemma3_text` (`Gemma3ForCausalLM`, and the text part of the multimodal `gemma3`):
    /// RMSNorm scaling by `(1 + w)`, embeddings × `√hidden`, GeGLU with tanh-GELU, norms of
    /// the attention and MLP outputs too, q/k norms, `query_pre_attn_scalar`, and per layer a
    /// sliding or full attention with a RoPE each (`layer_types`).
    Gemma3,
}

impl ModelType {
    /// The HF `model_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Phi3 => "phi3",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3_text",
        }
    }

    /// The HF `architectures` entry of the causal-LM class.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Phi3 => "Phi3ForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Llama,
            Self::Mistral,
            Self::Phi3,
            Self::Qwen2,
            Self::Qwen3,
            Self::Gemma3,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// The gate activation of the MLP (HF `hidden_act` / Gemma's `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `silu`: SwiGLU (LLaMA and most families).
    Silu,
    /// `gelu_pytorch_tanh`: GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

impl HiddenAct {
    /// The HF name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Silu => "silu",
            Self::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// The hyper-parameters of a LLaMA-style decoder (HF field names).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The family (`model_type`), written back to `config.json`.
    pub model_type: ModelType,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// The output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (HF allows one or a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
    /// Biases on q/k/v/o (llama's `attention_bias`).
    pub attention_bias: bool,
    /// Biases on q/k/v only (Qwen2's projections).
    pub qkv_bias: bool,
    /// RMSNorm (width `head_dim`, the same ε) over each head of q and k before RoPE (Qwen3's
    /// `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Each query of a sliding layer sees only the last `sliding_window` keys up to its
    /// position (Mistral's `sliding_window`; `None`: full causal attention everywhere).
    pub sliding_window: Option<usize>,
    /// The attention of each layer (HF `layer_types`, Gemma 3's sliding and full layers);
    /// `None`: every layer the same, sliding where `sliding_window` is set.
    pub layer_types: Option<Vec<LayerType>>,
    /// The RoPE of the sliding layers where it is not `rope` (Gemma 3's
    /// `rope_parameters.sliding_attention`).
    pub rope_sliding: Option<RopeConfig>,
    /// The attention scale is `query_pre_attn_scalar^-½` (Gemma 3) instead of `head_dim^-½`.
    pub query_pre_attn_scalar: Option<f64>,
    /// The MLP's gate activation.
    pub hidden_act: HiddenAct,
    /// Every RMSNorm scales by `1 + w` instead of `w` (Gemma).
    pub norm_unit_offset: bool,
    /// The embedding's output is multiplied by `√hidden_size` (Gemma; the tied head uses the
    /// table unscaled).
    pub scale_embeddings: bool,
    /// Each layer norms its attention output and its MLP output too before the residual sums
    /// (Gemma 3: `post_attention_layernorm` on the attention's output,
    /// `pre_feedforward_layernorm` before the MLP, `post_feedforward_layernorm` after it).
    pub sandwich_norms: bool,
    /// One `qkv_proj` `[q + 2 kv, hidden]` and one `gate_up_proj` `[2 · intermediate, hidden]`
    /// (gate first) instead of five linears (Phi-3).
    pub fused_projections: bool,
    /// The leading width of each head that RoPE rotates (`head_dim · partial_rotary_factor`;
    /// `head_dim` unless the family says otherwise); the rest passes through.
    pub rotary_dim: usize,
    /// Biases on gate/up/down.
    pub mlp_bias: bool,
    /// RoPE.
    pub rope: RopeConfig,
}

pub(crate) fn err(path: &str, field: &str, problem: impl Into<String>) -> LlamaError {
    LlamaError::Config {
        path: path.to_string(),
        field: field.to_string(),
        problem: problem.into(),
    }
}

pub(crate) struct Fields<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) path: &'a str,
}

impl Fields<'_> {
    pub(crate) fn usize(&self, field: &str) -> Result<usize, LlamaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Err(err(self.path, field, "missing")),
            Some(v) => as_usize(v).ok_or_else(|| {
                err(
                    self.path,
                    field,
                    format!("expected a positive integer, found {v}"),
                )
            }),
        }
    }

    pub(crate) fn usize_or(&self, field: &str, default: usize) -> Result<usize, LlamaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.usize(field),
        }
    }

    pub(crate) fn f64_or(&self, field: &str, default: Option<f64>) -> Result<f64, LlamaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => default.ok_or_else(|| err(self.path, field, "missing")),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(self.path, field, format!("expected a number, found {v}"))),
        }
    }

    pub(crate) fn bool_or(&self, field: &str, default: bool) -> Result<bool, LlamaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(err(
                self.path,
                field,
                format!("expected true or false, found {v}"),
            )),
        }
    }

    pub(crate) fn token(&self, field: &str) -> Result<Option<u32>, LlamaError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| err(self.path, field, format!("expected a token id, found {v}"))),
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64()
        .filter(|&x| x > 0)
        .and_then(|x| usize::try_from(x).ok())
}

impl LlamaConfig {
    /// Reads `config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| LlamaError::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &str) -> Result<Self, LlamaError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| LlamaError::format(path, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return Err(LlamaError::format(path, "expected a JSON object"));
        };
        Self::from_map(map, path)
    }

    fn from_map(map: &Map<String, Value>, path: &str) -> Result<Self, LlamaError> {
        if map.get("model_type").and_then(Value::as_str) == Some("gemma3") {
            // The multimodal checkpoint: its text model (the vision tower is not read).
            let text = config_gemma::text_config(map, path)?;
            return Self::from_fields(ModelType::Gemma3, &config_gemma::with_defaults(&text), path);
        }
        let model_type = match map.get("model_type") {
            None | Some(Value::Null) => ModelType::Llama,
            Some(Value::String(t)) => ModelType::parse(t).ok_or_else(|| {
                err(
                    path,
                    "model_type",
                    format!(
                        "`{t}` is not supported (`llama`, `mistral`, `phi3`, `qwen2`, `qwen3`, \
                         `gemma3_text`)"
                    ),
                )
            })?,
            Some(v) => {
                return Err(err(
                    path,
                    "model_type",
                    format!("expected a string, found {v}"),
                ));
            }
        };
        if model_type == ModelType::Gemma3 {
            return Self::from_fields(model_type, &config_gemma::with_defaults(map), path);
        }
        Self::from_fields(model_type, map, path)
    }

    /// The config of a `model_type` from its fields (with the family's defaults in place).
    fn from_fields(
        model_type: ModelType,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<Self, LlamaError> {
        let f = Fields { map, path };
        let gemma = model_type == ModelType::Gemma3;
        config_refuse::refuse_unmodelled(&f, model_type)?;
        match map.get("hidden_act").and_then(Value::as_str) {
            // Gemma 3's modeling file reads `hidden_activation` (checked below) alone.
            _ if gemma => config_gemma::refuse_unsupported(&f)?,
            None | Some("silu") => {}
            Some(a) => {
                return Err(err(
                    path,
                    "hidden_act",
                    format!("`{a}` is not supported (only `silu`)"),
                ));
            }
        }
        if let Some(tp) = map.get("pretraining_tp").and_then(Value::as_u64)
            && tp != 1
        {
            return Err(err(path, "pretraining_tp", "only 1 is supported"));
        }
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f.usize_or("num_key_value_heads", num_attention_heads)?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(err(
                path,
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match map.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err(
                        path,
                        "num_attention_heads",
                        format!(
                            "{num_attention_heads} does not divide hidden_size {hidden_size} (and no head_dim is given)"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
            Some(_) => f.usize("head_dim")?,
        };
        if head_dim % 2 != 0 {
            return Err(err(
                path,
                "head_dim",
                format!("{head_dim} is odd; RoPE needs an even head width"),
            ));
        }
        let eos_token_ids = match map.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(path, "eos_token_id", "expected token ids"))?,
            Some(_) => vec![f.token("eos_token_id")?.expect("present")],
        };
        let rms_norm_eps = f.f64_or("rms_norm_eps", Some(1e-6))?;
        if rms_norm_eps <= 0.0 {
            return Err(err(path, "rms_norm_eps", "must be positive"));
        }
        // Qwen2's q/k/v always carry biases and its o_proj never does; neither Qwen has MLP
        // biases; Qwen3's `attention_bias` is llama's (all four projections).
        let qwen2 = model_type == ModelType::Qwen2;
        let qwen = qwen2 || model_type == ModelType::Qwen3;
        let num_hidden_layers = f.usize("num_hidden_layers")?;
        let (sliding_window, layer_types) = match model_type {
            ModelType::Mistral | ModelType::Phi3 => {
                let window = match map.get("sliding_window") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(f.usize("sliding_window")?),
                };
                (window, None)
            }
            ModelType::Qwen2 | ModelType::Qwen3 => layer_types::qwen(&f, num_hidden_layers)?,
            ModelType::Gemma3 => (
                Some(f.usize("sliding_window")?),
                Some(layer_types::gemma(&f, num_hidden_layers)?),
            ),
            ModelType::Llama => (None, None),
        };
        let query_pre_attn_scalar = if gemma {
            let s = f.f64_or("query_pre_attn_scalar", None)?;
            if s <= 0.0 {
                return Err(err(path, "query_pre_attn_scalar", "must be positive"));
            }
            Some(s)
        } else {
            None
        };
        let (rope, rope_sliding) = if gemma {
            let (full, sliding) = config_gemma::ropes(&f)?;
            (full, Some(sliding))
        } else {
            (read_rope(map, path)?, None)
        };
        let rotary_dim = rotary_dim(map, path, head_dim)?;
        for r in std::iter::once(&rope).chain(&rope_sliding) {
            if let RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } = &r.scaling
            {
                for (k, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if list.len() != rotary_dim / 2 {
                        return Err(err(
                            path,
                            &format!("rope_parameters.{k}"),
                            format!(
                                "{} factors for {} rotated pairs (head_dim {head_dim} x \
                                 partial_rotary_factor)",
                                list.len(),
                                rotary_dim / 2
                            ),
                        ));
                    }
                }
            }
        }
        Ok(Self {
            model_type,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            vocab_size: f.usize("vocab_size")?,
            max_position_embeddings: f.usize_or("max_position_embeddings", 2048)?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            bos_token_id: f.token("bos_token_id")?,
            eos_token_ids,
            pad_token_id: f.token("pad_token_id")?,
            attention_bias: !qwen2 && f.bool_or("attention_bias", false)?,
            qkv_bias: qwen2,
            qk_norm: model_type == ModelType::Qwen3 || gemma,
            sliding_window,
            layer_types,
            rope_sliding,
            query_pre_attn_scalar,
            hidden_act: if gemma {
                HiddenAct::GeluTanh
            } else {
                HiddenAct::Silu
            },
            norm_unit_offset: gemma,
            scale_embeddings: gemma,
            sandwich_norms: gemma,
            fused_projections: model_type == ModelType::Phi3,
            rotary_dim,
            mlp_bias: !qwen && f.bool_or("mlp_bias", false)?,
            rope,
        })
    }

    /// The attention of layer `i`: `layer_types[i]`, or the same for every layer (sliding
    /// where `sliding_window` is set).
    pub fn layer_type(&self, i: usize) -> LayerType {
        match &self.layer_types {
            Some(types) => types[i],
            None if self.sliding_window.is_some() => LayerType::Sliding,
            None => LayerType::Full,
        }
    }

    /// The window of layer `i`'s attention (`None`: full causal attention).
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        match self.layer_type(i) {
            LayerType::Sliding => self.sliding_window,
            LayerType::Full => None,
        }
    }

    /// The RoPE of layer `i`.
    pub fn layer_rope(&self, i: usize) -> &RopeConfig {
        match (self.layer_type(i), &self.rope_sliding) {
            (LayerType::Sliding, Some(r)) => r,
            _ => &self.rope,
        }
    }

    /// The scale of the attention's scores `q·k`: `query_pre_attn_scalar^-½` where the
    /// family sets it, `head_dim^-½` otherwise.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// The linears of decoder layer `i`: HF path, `[out, in]`, whether it has a bias. Five
    /// separate q/k/v and gate/up projections, or Phi-3's fused `qkv_proj` and `gate_up_proj`.
    pub fn layer_linears(&self, i: usize) -> Vec<(String, [usize; 2], bool)> {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let (qkv_b, o_b, mlp_b) = (self.qkv_has_bias(), self.o_has_bias(), self.mlp_bias);
        let list: Vec<(&str, [usize; 2], bool)> = if self.fused_projections {
            vec![
                ("self_attn.qkv_proj", [q + 2 * kv, h], qkv_b),
                ("self_attn.o_proj", [h, q], o_b),
                ("mlp.gate_up_proj", [2 * f, h], mlp_b),
                ("mlp.down_proj", [h, f], mlp_b),
            ]
        } else {
            vec![
                ("self_attn.q_proj", [q, h], qkv_b),
                ("self_attn.k_proj", [kv, h], qkv_b),
                ("self_attn.v_proj", [kv, h], qkv_b),
                ("self_attn.o_proj", [h, q], o_b),
                ("mlp.gate_proj", [f, h], mlp_b),
                ("mlp.up_proj", [f, h], mlp_b),
                ("mlp.down_proj", [h, f], mlp_b),
            ]
        };
        list.into_iter()
            .map(|(n, dims, bias)| (format!("model.layers.{i}.{n}"), dims, bias))
            .collect()
    }

    /// Whether q/k/v have biases.
    pub fn qkv_has_bias(&self) -> bool {
        self.attention_bias || self.qkv_bias
    }

    /// Whether o_proj has a bias.
    pub fn o_has_bias(&self) -> bool {
        self.attention_bias
    }

    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
