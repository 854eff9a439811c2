//! The field names of PEFT 0.21's `LoraConfig`, sorted by how burn-qlora treats them.

use serde_json::Value;

/// PEFT 0.21 `LoraConfig` fields that burn-qlora accepts only at their neutral value
/// (`null`, `false`, `{}`, `[]`): the feature they switch on is not implemented.
pub(crate) const NEUTRAL_ONLY: &[(&str, &str)] = &[
    (
        "fan_in_fan_out",
        "Conv1D (GPT-2 style, [in, out]) base layers are not supported",
    ),
    ("layer_replication", "layer replication is not implemented"),
    (
        "target_parameters",
        "adapting nn.Parameter targets is not implemented",
    ),
    ("use_qalora", "QA-LoRA is not implemented"),
    ("lora_bias", "a bias on lora_B is not implemented"),
    (
        "alora_invocation_tokens",
        "activated LoRA is not implemented",
    ),
    ("arrow_config", "Arrow routing is not implemented"),
    ("corda_config", "CorDA initialisation is not implemented"),
    ("eva_config", "EVA initialisation is not implemented"),
    ("kasa_config", "KaSA is not implemented"),
    (
        "lora_ga_config",
        "LoRA-GA initialisation is not implemented",
    ),
    ("monteclora_config", "MonteCLoRA is not implemented"),
    ("velora_config", "VeLoRA is not implemented"),
    (
        "megatron_config",
        "Megatron parallel layers are not supported",
    ),
    ("use_bdlora", "BD-LoRA is not implemented"),
    ("runtime_config", "runtime configs are not implemented"),
];

/// PEFT fields that carry no behaviour burn-qlora needs (any value accepted).
pub(crate) const INFORMATIONAL: &[&str] = &[
    "peft_type",
    "peft_version",
    "auto_mapping",
    "megatron_core",
    "qalora_group_size",
];

/// Fields this type reads.
pub(crate) const OWN: &[&str] = &[
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "use_dora",
    "bias",
    "init_lora_weights",
    "loftq_config",
    "modules_to_save",
    "trainable_token_indices",
    "ensure_weight_tying",
    "base_model_name_or_path",
    "task_type",
    "inference_mode",
    "revision",
];

pub(crate) fn is_neutral(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}
