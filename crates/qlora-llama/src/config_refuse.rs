//! The settings of a `config.json` that the decoder does not compute, refused by name before
//! any weight is read: dropout in the base model, per-layer attention kinds in the families
//! that have one kind, and quantized checkpoints that are not bitsandbytes 4-bit.

use serde_json::Value;

use crate::config::{Fields, err};
use crate::{LlamaError, ModelType};

/// Settings this crate does not compute, each a named error rather than a model that runs
/// differently from transformers' with no word: dropout in the base model (transformers applies
/// it while training), `layer_types` other than one attention kind in every layer (for the
/// families that have a single kind; Qwen's and Gemma 3's are read per layer), and a `quantization_config` that is not
/// bitsandbytes 4-bit (GPTQ, AWQ, FP8, LLM.int8 weights need kernels this crate lacks).
pub(crate) fn refuse_unmodelled(f: &Fields<'_>, model_type: ModelType) -> Result<(), LlamaError> {
    for key in [
        "attention_dropout",
        "resid_pdrop",
        "embd_pdrop",
        "hidden_dropout",
    ] {
        if f.f64_or(key, Some(0.0))? != 0.0 {
            return Err(err(
                f.path,
                key,
                format!(
                    "{} is not supported: dropout in the base model is not applied here (set it                      to 0.0 to run without it; LoRA's own dropout is lora_dropout)",
                    f.map[key]
                ),
            ));
        }
    }
    // Qwen's and Gemma 3's are read per layer.
    if !matches!(
        model_type,
        ModelType::Qwen2 | ModelType::Qwen3 | ModelType::Gemma3
    ) && let Some(types) = f.map.get("layer_types").filter(|v| !v.is_null())
    {
        let windowed = f.map.get("sliding_window").is_some_and(|v| !v.is_null())
            && matches!(model_type, ModelType::Mistral | ModelType::Phi3);
        let every = if windowed {
            "sliding_attention"
        } else {
            "full_attention"
        };
        let uniform = types
            .as_array()
            .is_some_and(|a| a.iter().all(|t| t.as_str() == Some(every)));
        if !uniform {
            return Err(err(
                f.path,
                "layer_types",
                format!(
                    "{types} is not supported for model_type `{}` (only `{every}` in every layer)",
                    model_type.as_str()
                ),
            ));
        }
    }
    if let Some(q) = f.map.get("quantization_config").filter(|v| !v.is_null()) {
        let method = q.get("quant_method").and_then(Value::as_str);
        let eight = q.get("load_in_8bit").and_then(Value::as_bool) == Some(true);
        let four = q.get("load_in_4bit").and_then(Value::as_bool) != Some(false);
        match method {
            Some("bitsandbytes") if four && !eight => {}
            Some("bitsandbytes") => {
                return Err(err(
                    f.path,
                    "quantization_config",
                    "bitsandbytes 8-bit (LLM.int8) weights are not supported: only 4-bit \
                     (load_in_4bit, nf4 or fp4) folders load",
                ));
            }
            Some(other) => {
                return Err(err(
                    f.path,
                    "quantization_config",
                    format!(
                        "quant_method `{other}` is not supported: only bitsandbytes 4-bit \
                         folders load (use the unquantized model; it is quantized to NF4 on load)"
                    ),
                ));
            }
            None => {
                return Err(err(
                    f.path,
                    "quantization_config",
                    "no quant_method: only bitsandbytes 4-bit folders load",
                ));
            }
        }
    }
    Ok(())
}
