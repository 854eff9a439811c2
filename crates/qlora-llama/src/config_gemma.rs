//! Gemma 3's config (`gemma3_text`, and the text part of the multimodal `gemma3`), as
//! transformers' `Gemma3TextConfig` reads it: its defaults for the fields a checkpoint leaves
//! out (the multimodal checkpoints' `text_config` gives only what differs), `layer_types` with
//! a RoPE per layer type (`rope_parameters.{full,sliding}_attention`, or transformers 4's
//! `rope_theta` + `rope_scaling` for the full layers and `rope_local_base_freq` for the sliding
//! ones), and the settings it has that this crate does not compute refused by name.
//!
//! Gemma 3 (Gemma Team 2025) is a LLaMA-style decoder whose RMSNorm scales by `(1 + w)`, whose
//! embeddings are multiplied by `√hidden`, whose MLP is GeGLU with tanh-GELU, whose layers norm
//! the attention and MLP outputs too (four norms per layer) and whose attention scale is
//! `query_pre_attn_scalar^-½`.

use serde_json::{Map, Value, json};

use crate::config::{Fields, err};
use crate::layer_types::LayerType;
use crate::rope_config::read_rope_params;
use crate::{LlamaConfig, LlamaError, RopeConfig};

/// `Gemma3TextConfig`'s defaults (transformers 5.23) for what a config leaves out.
fn defaults() -> Map<String, Value> {
    let Value::Object(m) = json!({
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-6,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "tie_word_embeddings": true,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
    }) else {
        unreachable!("a JSON object")
    };
    m
}

/// The config with Gemma 3's defaults for the fields it leaves out (a field given as `null`
/// stays `null`, as the dataclass keeps it: no pad token, no window, ...).
pub(crate) fn with_defaults(map: &Map<String, Value>) -> Map<String, Value> {
    let mut m = defaults();
    m.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

/// The text model's config of a multimodal Gemma 3 config (`model_type` `gemma3`): its
/// `text_config` (absent: every default), with the top-level `tie_word_embeddings` (which
/// `Gemma3Config` ties the head by).
pub(crate) fn text_config(
    map: &Map<String, Value>,
    path: &str,
) -> Result<Map<String, Value>, LlamaError> {
    let mut text = match map.get("text_config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(t)) => t.clone(),
        Some(v) => {
            return Err(err(
                path,
                "text_config",
                format!("expected an object, found {v}"),
            ));
        }
    };
    match text.get("model_type").and_then(Value::as_str) {
        None | Some("gemma3_text") => {}
        Some(t) => {
            return Err(err(
                path,
                "text_config.model_type",
                format!("`{t}` is not supported (only `gemma3_text`)"),
            ));
        }
    }
    text.insert("model_type".into(), "gemma3_text".into());
    // `Gemma3Config.tie_word_embeddings` (default true; `null` ties nothing) decides.
    let tie = match map.get("tie_word_embeddings") {
        None => Value::Bool(true),
        Some(Value::Null) => Value::Bool(false),
        Some(v) => v.clone(),
    };
    text.insert("tie_word_embeddings".into(), tie);
    if let Some(q) = map.get("quantization_config") {
        text.insert("quantization_config".into(), q.clone());
    }
    Ok(text)
}

/// The settings of Gemma 3 that this crate does not compute, refused by name; the MLP's
/// activation checked.
pub(crate) fn refuse_unsupported(f: &Fields<'_>) -> Result<(), LlamaError> {
    for field in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if f.map.get(field).is_some_and(|v| !v.is_null()) {
            return Err(err(
                f.path,
                field,
                "logit softcapping is not supported (only `null`)",
            ));
        }
    }
    if f.bool_or("use_bidirectional_attention", false)? {
        return Err(err(
            f.path,
            "use_bidirectional_attention",
            "bidirectional attention is not supported (only causal)",
        ));
    }
    match f.map.get("hidden_activation").and_then(Value::as_str) {
        None | Some("gelu_pytorch_tanh") => Ok(()),
        Some(a) => Err(err(
            f.path,
            "hidden_activation",
            format!("`{a}` is not supported (only `gelu_pytorch_tanh`)"),
        )),
    }
}

/// RoPE of the full-attention layers and of the sliding ones, as `Gemma3TextConfig` builds
/// them: `rope_parameters.{full,sliding}_attention` (each absent: the default type), transformers
/// 4's `rope_scaling` merged into the full layers', and the bases `rope_theta` (default 1e6) and
/// `rope_local_base_freq` (1e4) where an entry gives none.
pub(crate) fn ropes(f: &Fields<'_>) -> Result<(RopeConfig, RopeConfig), LlamaError> {
    let object = |key: &str, v: Option<&Value>| -> Result<Option<Map<String, Value>>, LlamaError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(v) => Err(err(f.path, key, format!("expected an object, found {v}"))),
        }
    };
    let per_type = object("rope_parameters", f.map.get("rope_parameters"))?;
    if let Some(p) = &per_type
        && !p.contains_key("full_attention")
        && !p.contains_key("sliding_attention")
    {
        return Err(err(
            f.path,
            "rope_parameters",
            "expected `full_attention` and `sliding_attention` entries (Gemma 3 has a RoPE per layer type)",
        ));
    }
    let entry = |k: &str| -> Result<Map<String, Value>, LlamaError> {
        let v = per_type.as_ref().and_then(|p| p.get(k));
        Ok(object(&format!("rope_parameters.{k}"), v)?.unwrap_or_default())
    };
    let (mut full, sliding) = (entry("full_attention")?, entry("sliding_attention")?);
    if let Some(scaling) = object("rope_scaling", f.map.get("rope_scaling"))? {
        full.extend(scaling);
    }
    let theta = f.f64_or("rope_theta", Some(1e6))?;
    let local = f.f64_or("rope_local_base_freq", Some(1e4))?;
    Ok((
        read_rope_params(
            &full,
            "rope_parameters.full_attention",
            theta,
            f.map,
            f.path,
        )?,
        read_rope_params(
            &sliding,
            "rope_parameters.sliding_attention",
            local,
            f.map,
            f.path,
        )?,
    ))
}

/// The `config.json` fields of a Gemma 3 text model, beyond the common ones (and in place of
/// `hidden_act` and the single `rope_parameters`): transformers 5's per-type `rope_parameters`
/// and, beside them, transformers 4's `rope_theta`, `rope_scaling` and `rope_local_base_freq`.
pub(crate) fn hf_fields(c: &LlamaConfig) -> Value {
    let sliding = c.rope_sliding.as_ref().unwrap_or(&c.rope);
    let layer_types: Vec<&str> = (0..c.num_hidden_layers)
        .map(|i| c.layer_type(i).as_str())
        .collect();
    json!({
        "attention_bias": c.attention_bias,
        "attn_logit_softcapping": null,
        "final_logit_softcapping": null,
        "hidden_activation": "gelu_pytorch_tanh",
        "layer_types": layer_types,
        // An `int` in `Gemma3TextConfig` (its strict dataclass refuses `24.0`).
        "query_pre_attn_scalar": c.query_pre_attn_scalar.map(|q| {
            if q.fract() == 0.0 && q.abs() < 9.0e15 {
                json!(q as i64)
            } else {
                json!(q)
            }
        }),
        "rope_parameters": {
            LayerType::Full.as_str(): c.rope.to_hf_value(1.0),
            LayerType::Sliding.as_str(): sliding.to_hf_value(1.0),
        },
        // What transformers 4 reads (5 merges the same values into `rope_parameters`).
        "rope_theta": c.rope.theta,
        "rope_scaling": c.rope.to_hf_scaling_value(),
        "rope_local_base_freq": sliding.theta,
        "sliding_window": c.sliding_window,
        "use_bidirectional_attention": false,
    })
}
