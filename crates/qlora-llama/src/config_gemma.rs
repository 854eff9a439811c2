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

/// The config with Gemma 3's defaults under what it gives (a field given as `null` takes the
/// default too, as the dataclass does for the fields whose default is not `None`).
pub(crate) fn with_defaults(map: &Map<String, Value>) -> Map<String, Value> {
    let mut m = defaults();
    for (k, v) in map {
        if !(v.is_null() && m.contains_key(k)) {
            m.insert(k.clone(), v.clone());
        }
    }
    m
}

/// The text model's config of a multimodal Gemma 3 config (`model_type` `gemma3`): its
/// `text_config` (absent: every default), with the top-level `tie_word_embeddings` (which
/// `Gemma3Config` ties the head by) where given.
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
    if let Some(tie) = map.get("tie_word_embeddings").filter(|v| !v.is_null()) {
        text.insert("tie_word_embeddings".into(), tie.clone());
    }
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

/// RoPE of the full-attention layers and of the sliding ones.
pub(crate) fn ropes(f: &Fields<'_>) -> Result<(RopeConfig, RopeConfig), LlamaError> {
    let per_type = match f.map.get("rope_parameters") {
        Some(Value::Object(p))
            if p.contains_key("full_attention") || p.contains_key("sliding_attention") =>
        {
            Some(p)
        }
        None | Some(Value::Null) => None,
        Some(Value::Object(_)) => {
            return Err(err(
                f.path,
                "rope_parameters",
                "expected `full_attention` and `sliding_attention` entries (Gemma 3 has a RoPE per layer type)",
            ));
        }
        Some(v) => {
            return Err(err(
                f.path,
                "rope_parameters",
                format!("expected an object, found {v}"),
            ));
        }
    };
    let empty = Map::new();
    let one = |key: &str, theta: f64, given: Option<&Map<String, Value>>| {
        read_rope_params(given.unwrap_or(&empty), key, theta, f.map, f.path)
    };
    let sub = |p: &Map<String, Value>, k: &str| -> Result<Option<Map<String, Value>>, LlamaError> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(v) => Err(err(
                f.path,
                &format!("rope_parameters.{k}"),
                format!("expected an object, found {v}"),
            )),
        }
    };
    match per_type {
        Some(p) => {
            let (full, sliding) = (sub(p, "full_attention")?, sub(p, "sliding_attention")?);
            Ok((
                one("rope_parameters.full_attention", 1e6, full.as_ref())?,
                one("rope_parameters.sliding_attention", 1e4, sliding.as_ref())?,
            ))
        }
        None => {
            // transformers 4: `rope_scaling` applies to the full layers.
            let scaling = match f.map.get("rope_scaling") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m.clone()),
                Some(v) => {
                    return Err(err(
                        f.path,
                        "rope_scaling",
                        format!("expected an object, found {v}"),
                    ));
                }
            };
            let theta = f.f64_or("rope_theta", Some(1e6))?;
            let local = f.f64_or("rope_local_base_freq", Some(1e4))?;
            Ok((
                one("rope_scaling", theta, scaling.as_ref())?,
                one("rope_local_base_freq", local, None)?,
            ))
        }
    }
}

/// The `config.json` fields of a Gemma 3 text model (transformers 5 form), beyond the common
/// ones (and in place of `hidden_act` and the single `rope_parameters`).
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
        "query_pre_attn_scalar": c.query_pre_attn_scalar,
        "rope_parameters": {
            LayerType::Full.as_str(): c.rope.to_hf_value(1.0),
            LayerType::Sliding.as_str(): sliding.to_hf_value(1.0),
        },
        "sliding_window": c.sliding_window,
        "use_bidirectional_attention": false,
    })
}
