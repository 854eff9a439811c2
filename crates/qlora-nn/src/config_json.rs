//! Writing a [`LoraConfig`] as PEFT's `adapter_config.json`: every field of PEFT 0.21's
//! `LoraConfig`, the ones this crate does not use at PEFT's neutral values, so PEFT (and any
//! tool reading PEFT's files) loads it as its own.

use serde_json::{Map, Value};

use crate::peft_fields::NEUTRAL_ONLY;
use crate::{InitLoraWeights, LoraConfig, TrainableTokenIndices};

impl LoraConfig {
    /// The JSON PEFT writes for this config: every field of PEFT 0.21's `LoraConfig` (unused ones
    /// at their defaults), keys sorted as `save_pretrained` writes them.
    pub fn to_peft_json(&self) -> String {
        let mut m: std::collections::BTreeMap<&str, Value> = std::collections::BTreeMap::new();
        for (field, _) in NEUTRAL_ONLY {
            let neutral = match *field {
                "fan_in_fan_out" | "use_qalora" | "lora_bias" => Value::Bool(false),
                _ => Value::Null,
            };
            if *field != "runtime_config" {
                m.insert(field, neutral);
            }
        }
        m.insert("peft_type", "LORA".into());
        m.insert("megatron_core", "megatron.core".into());
        m.insert("qalora_group_size", 16.into());
        m.insert("auto_mapping", Value::Null);
        m.insert("r", self.r.into());
        m.insert("lora_alpha", number(self.lora_alpha));
        m.insert("lora_dropout", serde_json::json!(self.lora_dropout));
        m.insert(
            "target_modules",
            serde_json::to_value(&self.target_modules).expect("serialisable"),
        );
        m.insert(
            "exclude_modules",
            serde_json::to_value(&self.exclude_modules).expect("serialisable"),
        );
        m.insert(
            "layers_to_transform",
            serde_json::to_value(&self.layers_to_transform).expect("serialisable"),
        );
        m.insert(
            "layers_pattern",
            serde_json::to_value(&self.layers_pattern).expect("serialisable"),
        );
        m.insert(
            "rank_pattern",
            Value::Object(
                self.rank_pattern
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).into()))
                    .collect(),
            ),
        );
        m.insert(
            "alpha_pattern",
            Value::Object(
                self.alpha_pattern
                    .iter()
                    .map(|(k, v)| (k.clone(), number(*v)))
                    .collect(),
            ),
        );
        m.insert("use_rslora", self.use_rslora.into());
        m.insert("use_dora", self.use_dora.into());
        m.insert(
            "bias",
            serde_json::to_value(self.bias).expect("serialisable"),
        );
        m.insert(
            "init_lora_weights",
            serde_json::to_value(self.init_lora_weights).expect("serialisable"),
        );
        m.insert(
            "loftq_config",
            match self.init_lora_weights {
                InitLoraWeights::Loftq { iters } => {
                    serde_json::json!({"loftq_bits": 4, "loftq_iter": iters})
                }
                _ => Value::Object(Map::new()),
            },
        );
        m.insert(
            "modules_to_save",
            serde_json::to_value(&self.modules_to_save).expect("serialisable"),
        );
        m.insert(
            "trainable_token_indices",
            self.trainable_token_indices
                .as_ref()
                .map_or(Value::Null, token_indices_value),
        );
        m.insert("ensure_weight_tying", self.ensure_weight_tying.into());
        m.insert(
            "base_model_name_or_path",
            serde_json::to_value(&self.base_model_name_or_path).expect("serialisable"),
        );
        m.insert(
            "task_type",
            serde_json::to_value(&self.task_type).expect("serialisable"),
        );
        m.insert("inference_mode", self.inference_mode.into());
        m.insert(
            "revision",
            serde_json::to_value(&self.revision).expect("serialisable"),
        );
        serde_json::to_string_pretty(&m).expect("serialisable")
    }
}

/// An integral float as a JSON integer (PEFT writes `"lora_alpha": 16`).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::json!(v)
    }
}

fn token_indices_value(t: &TrainableTokenIndices) -> Value {
    match t {
        TrainableTokenIndices::List(v) => serde_json::to_value(v).expect("serialisable"),
        TrainableTokenIndices::ByModule(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).expect("serialisable")))
                .collect(),
        ),
    }
}
