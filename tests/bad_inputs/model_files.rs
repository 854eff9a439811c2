//! Malformed `config.json`, non-finite weights, tokenizer files that do not parse, and a
//! writer that must fail before it writes anything.

use std::path::Path;

use burn::tensor::Device;
use burn_qlora::llama::{LlamaForCausalLM, LlamaTokenizer, SaveFormat};
use burn_qlora::nn::{LoraApplier, LoraConfig, ModuleSelector};
use serde_json::{Map, Value, json};

use crate::{Case, copy_fixture, files_under, load_model, replace_tensor, tensor_bytes};

/// Edits `dir/config.json` with `f`.
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn config_case(
    name: &'static str,
    want: &[&'static str],
    f: impl FnOnce(&mut Map<String, Value>) + 'static,
) -> Case {
    let mut w = vec!["config.json"];
    w.extend_from_slice(want);
    let w: &'static [&'static str] = Box::leak(w.into_boxed_slice());
    Case::new(name, w, move |d| {
        copy_fixture("tiny-llama", d);
        edit_config(d, f);
        load_model(d)
    })
}

fn set(key: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
    move |m| {
        m.insert(key.into(), v);
    }
}

/// Puts `value` at element `index` of f32 tensor `name` in the tiny LLaMA's weights.
fn poison(dir: &Path, name: &str, index: usize, value: f32) {
    let p = dir.join("model.safetensors");
    let mut b = tensor_bytes(&p, name);
    b[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    let (h, _) = crate::split_safetensors(&std::fs::read(&p).unwrap());
    let shape: Vec<usize> = h[name]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    replace_tensor(&p, name, "F32", &shape, b);
}

fn tokenizer(dir: &Path) -> Result<(), String> {
    LlamaTokenizer::from_dir(dir)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn cases() -> Vec<Case> {
    vec![
        config_case("cfg-missing-field", &["hidden_size", "missing"], |m| {
            m.remove("hidden_size");
        }),
        config_case(
            "cfg-gptq-quantization",
            &["quantization_config", "gptq", "not supported"],
            set(
                "quantization_config",
                json!({"quant_method": "gptq", "bits": 4, "group_size": 128}),
            ),
        ),
        config_case(
            "cfg-bnb-8bit",
            &["quantization_config", "8-bit"],
            set(
                "quantization_config",
                json!({"quant_method": "bitsandbytes", "load_in_8bit": true, "load_in_4bit": false}),
            ),
        ),
        config_case(
            "cfg-attention-dropout",
            &["attention_dropout", "dropout"],
            set("attention_dropout", json!(0.1)),
        ),
        config_case(
            "cfg-resid-pdrop",
            &["resid_pdrop", "dropout"],
            set("resid_pdrop", json!(0.05)),
        ),
        config_case(
            "cfg-embd-pdrop",
            &["embd_pdrop", "dropout"],
            set("embd_pdrop", json!(0.1)),
        ),
        config_case(
            "cfg-llama-layer-types-sliding",
            &["layer_types", "full_attention"],
            set(
                "layer_types",
                json!(["sliding_attention", "full_attention"]),
            ),
        ),
        config_case(
            "cfg-rope-scaling-disagrees",
            &["rope_scaling", "disagrees", "rope_parameters"],
            |m| {
                m.insert(
                    "rope_parameters".into(),
                    json!({"rope_type": "default", "rope_theta": 10000.0}),
                );
                m.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": 2.0}),
                );
            },
        ),
        config_case(
            "cfg-rope-theta-disagrees",
            &["rope_theta", "disagrees"],
            |m| {
                m.insert(
                    "rope_parameters".into(),
                    json!({"rope_type": "default", "rope_theta": 10000.0}),
                );
                m.insert("rope_theta".into(), json!(500000.0));
            },
        ),
        config_case(
            "cfg-zero-heads",
            &["num_attention_heads"],
            set("num_attention_heads", json!(0)),
        ),
        config_case(
            "cfg-negative-size",
            &["intermediate_size", "positive integer"],
            set("intermediate_size", json!(-5)),
        ),
        config_case(
            "cfg-size-is-a-string",
            &["num_hidden_layers"],
            set("num_hidden_layers", json!("two")),
        ),
        config_case(
            "cfg-zero-vocab",
            &["vocab_size"],
            set("vocab_size", json!(0)),
        ),
        config_case(
            "cfg-kv-heads-not-dividing",
            &["num_key_value_heads", "does not divide"],
            set("num_key_value_heads", json!(3)),
        ),
        config_case(
            "cfg-heads-not-dividing-hidden",
            &["does not divide hidden_size"],
            |m| {
                m.remove("head_dim");
                m.insert("num_attention_heads".into(), json!(3));
                m.insert("num_key_value_heads".into(), json!(3));
            },
        ),
        config_case(
            "cfg-activation",
            &["hidden_act", "gelu"],
            set("hidden_act", json!("gelu")),
        ),
        config_case(
            "cfg-rope-type",
            &["rope_parameters.rope_type", "yarn"],
            set(
                "rope_parameters",
                json!({"rope_type": "yarn", "rope_theta": 1e4}),
            ),
        ),
        config_case(
            "cfg-llama3-rope-incomplete",
            &["low_freq_factor"],
            set(
                "rope_parameters",
                json!({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
            ),
        ),
        config_case(
            "cfg-model-type",
            &["model_type"],
            set("model_type", json!("gpt2")),
        ),
        // 2^40 layers: read until the first layer the file lacks, never allocated up front.
        Case::new(
            "cfg-absurd-layer-count",
            &["missing tensor", "model.layers.2."],
            |d| {
                copy_fixture("tiny-llama", d);
                edit_config(d, set("num_hidden_layers", json!(1u64 << 40)));
                load_model(d)
            },
        ),
        Case::new("cfg-not-json", &["config.json", "not valid JSON"], |d| {
            copy_fixture("tiny-llama", d);
            std::fs::write(d.join("config.json"), "{ not json").unwrap();
            load_model(d)
        }),
        Case::new("cfg-absent", &["config.json"], |d| {
            copy_fixture("tiny-llama", d);
            std::fs::remove_file(d.join("config.json")).unwrap();
            load_model(d)
        }),
        Case::new(
            "weights-nan",
            &[
                "model.layers.1.self_attn.v_proj.weight",
                "non-finite",
                "index 10",
            ],
            |d| {
                copy_fixture("tiny-llama", d);
                poison(d, "model.layers.1.self_attn.v_proj.weight", 10, f32::NAN);
                load_model(d)
            },
        ),
        Case::new(
            "weights-inf",
            &["model.embed_tokens.weight", "non-finite", "index 3"],
            |d| {
                copy_fixture("tiny-llama", d);
                poison(d, "model.embed_tokens.weight", 3, f32::INFINITY);
                load_model(d)
            },
        ),
        Case::new(
            "tokenizer-unknown-model",
            &["tokenizer.json", "does not parse"],
            |d| {
                std::fs::write(d.join("tokenizer.json"), r#"{"model": {"type": "Nope"}}"#).unwrap();
                tokenizer(d)
            },
        ),
        Case::new(
            "tokenizer-not-json",
            &["tokenizer.json", "does not parse"],
            |d| {
                std::fs::write(d.join("tokenizer.json"), "\u{0}\u{1}garbage").unwrap();
                tokenizer(d)
            },
        ),
        Case::new(
            "tokenizer-config-not-json",
            &["tokenizer_config.json", "not valid JSON"],
            |d| {
                crate::byte_tokenizer::write(d);
                std::fs::write(d.join("tokenizer_config.json"), "{").unwrap();
                tokenizer(d)
            },
        ),
        Case::new(
            "tokenizer-bad-chat-template",
            &["tokenizer_config.json", "template"],
            |d| {
                crate::byte_tokenizer::write(d);
                std::fs::write(
                    d.join("tokenizer_config.json"),
                    json!({"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}"})
                        .to_string(),
                )
                .unwrap();
                tokenizer(d)
            },
        ),
        Case::new(
            "lora-targets-match-nothing",
            &["target_modules", "matches no linear"],
            |d| {
                copy_fixture("tiny-llama", d);
                let device = Device::flex();
                let config = LoraConfig {
                    target_modules: Some(ModuleSelector::List(vec!["qkv_proj".into()])),
                    ..LoraConfig::default()
                };
                let applier = LoraApplier::new(config, None, &device).map_err(|e| e.to_string())?;
                LlamaForCausalLM::load(d, &applier)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        ),
        // A writer refusing its input leaves nothing behind.
        Case::new(
            "save-with-unmerged-adapters",
            &["holds adapters", "merge"],
            |d| {
                copy_fixture("tiny-llama", d);
                let device = Device::flex();
                let config = LoraConfig {
                    target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
                    ..LoraConfig::default()
                };
                let applier = LoraApplier::new(config, None, &device).map_err(|e| e.to_string())?;
                let model = LlamaForCausalLM::load(d, &applier).map_err(|e| e.to_string())?;
                let out = d.join("out");
                let r = model
                    .save_hf(&out, SaveFormat::F32)
                    .map_err(|e| e.to_string());
                let left = files_under(&out);
                if !left.is_empty() {
                    return Err(format!("files left behind: {left:?}"));
                }
                r
            },
        ),
    ]
}
