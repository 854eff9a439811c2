//! Malformed PEFT adapter folders (`adapter_config.json` + `adapter_model.safetensors`), made
//! from the golden PEFT adapter of the tiny LLaMA.

use std::path::Path;

use burn::tensor::Device;
use burn_qlora::llama::LlamaForCausalLM;
use burn_qlora::nn::{LoraApplier, LoraModel, PeftAdapter};
use serde_json::{Map, Value, json};

use crate::{Case, copy_fixture, drop_tensor, replace_tensor, tensor_bytes};

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";
const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q_MAGNITUDE: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";

fn load(dir: &Path) -> Result<(), String> {
    PeftAdapter::load(dir, &Device::flex())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let p = dir.join(CONFIG);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn config_case(
    name: &'static str,
    want: &'static [&'static str],
    f: impl FnOnce(&mut Map<String, Value>) + 'static,
) -> Case {
    Case::new(name, want, move |d| {
        copy_fixture("tiny-llama-lora", d);
        edit_config(d, f);
        load(d)
    })
}

fn set(key: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
    move |m| {
        m.insert(key.into(), v);
    }
}

/// Loads the adapter onto the golden tiny LLaMA (float base).
fn onto_model(dir: &Path) -> Result<(), String> {
    let device = Device::flex();
    let adapter = PeftAdapter::load(dir, &device).map_err(|e| e.to_string())?;
    let mut model = LlamaForCausalLM::load(
        crate::fixture("tiny-llama"),
        &LoraApplier::base_only(None, &device),
    )
    .map_err(|e| e.to_string())?;
    model
        .load_adapter(&adapter, "default")
        .map_err(|e| e.to_string())
}

pub fn cases() -> Vec<Case> {
    vec![
        config_case(
            "ad-unknown-field",
            &[CONFIG, "lora_alfa"],
            set("lora_alfa", json!(16)),
        ),
        config_case(
            "ad-dora-without-magnitudes",
            &[WEIGHTS, "use_dora", "lora_magnitude_vector"],
            set("use_dora", json!(true)),
        ),
        Case::new(
            "ad-magnitude-without-use-dora",
            &[WEIGHTS, "use_dora false"],
            |d| {
                copy_fixture("../dora/adapter", d);
                edit_config(d, set("use_dora", json!(false)));
                load(d)
            },
        ),
        Case::new(
            "ad-magnitude-wrong-length",
            &[WEIGHTS, "q_proj", "lora_magnitude_vector has 3 values"],
            |d| {
                copy_fixture("../dora/adapter", d);
                let p = d.join(WEIGHTS);
                replace_tensor(&p, Q_MAGNITUDE, "F32", &[3], vec![0; 12]);
                load(d)
            },
        ),
        config_case("ad-zero-rank", &[CONFIG, "`r`"], set("r", json!(0))),
        config_case(
            "ad-rank-is-a-string",
            &[CONFIG, "`r`"],
            set("r", json!("eight")),
        ),
        config_case(
            "ad-bad-bias",
            &[CONFIG, "bias", "sometimes"],
            set("bias", json!("sometimes")),
        ),
        config_case(
            "ad-not-lora",
            &[CONFIG, "peft_type", "IA3"],
            set("peft_type", json!("IA3")),
        ),
        config_case(
            "ad-bad-regex",
            &[CONFIG, "target_modules"],
            set("target_modules", json!("(q_proj")),
        ),
        config_case(
            "ad-rank-disagrees-with-tensors",
            &[WEIGHTS, "rank"],
            set("r", json!(4)),
        ),
        Case::new(
            "ad-config-not-json",
            &[CONFIG, "not a valid adapter_config.json"],
            |d| {
                copy_fixture("tiny-llama-lora", d);
                std::fs::write(d.join(CONFIG), "{\"r\": 8,").unwrap();
                load(d)
            },
        ),
        Case::new("ad-config-missing", &[CONFIG], |d| {
            copy_fixture("tiny-llama-lora", d);
            std::fs::remove_file(d.join(CONFIG)).unwrap();
            load(d)
        }),
        Case::new("ad-weights-truncated", &[WEIGHTS], |d| {
            copy_fixture("tiny-llama-lora", d);
            let p = d.join(WEIGHTS);
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            load(d)
        }),
        Case::new("ad-lone-lora-a", &[WEIGHTS, "q_proj", "lora_B"], |d| {
            copy_fixture("tiny-llama-lora", d);
            drop_tensor(
                &d.join(WEIGHTS),
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            );
            load(d)
        }),
        Case::new("ad-non-lora-tensor", &[WEIGHTS, "embed_tokens"], |d| {
            copy_fixture("tiny-llama-lora", d);
            let p = d.join(WEIGHTS);
            replace_tensor(
                &p,
                "base_model.model.model.embed_tokens.weight",
                "F32",
                &[2],
                vec![0; 8],
            );
            load(d)
        }),
        Case::new(
            "ad-module-not-in-model",
            &["not a linear of this model", "q_proj_x"],
            |d| {
                copy_fixture("tiny-llama-lora", d);
                let p = d.join(WEIGHTS);
                for (ab, shape) in [("A", [8usize, 64]), ("B", [64, 8])] {
                    replace_tensor(
                        &p,
                        &format!(
                            "base_model.model.model.layers.0.self_attn.q_proj_x.lora_{ab}.weight"
                        ),
                        "F32",
                        &shape,
                        vec![0; 4 * 512],
                    );
                }
                onto_model(d)
            },
        ),
        Case::new(
            "ad-shape-wrong-for-model",
            &[
                "model.layers.0.self_attn.q_proj",
                "[in 32, out 64]",
                "[in 64, out 64]",
            ],
            |d| {
                copy_fixture("tiny-llama-lora", d);
                let p = d.join(WEIGHTS);
                let b = tensor_bytes(&p, Q_A);
                replace_tensor(&p, Q_A, "F32", &[8, 32], b[..4 * 256].to_vec());
                onto_model(d)
            },
        ),
        // PEFT's `load_adapter` raises on a name in use; a second load under one name must not
        // panic or replace the first.
        Case::new("ad-duplicate-name", &["`default`", "already loaded"], |d| {
            copy_fixture("tiny-llama-lora", d);
            let device = Device::flex();
            let adapter = PeftAdapter::load(d, &device).map_err(|e| e.to_string())?;
            let mut model = LlamaForCausalLM::load(
                crate::fixture("tiny-llama"),
                &LoraApplier::base_only(None, &device),
            )
            .map_err(|e| e.to_string())?;
            model.load_adapter(&adapter, "default").unwrap();
            model
                .load_adapter(&adapter, "default")
                .map_err(|e| e.to_string())
        }),
        // PEFT raises when the targets match nothing in the model.
        Case::new(
            "ad-targets-match-nothing",
            &[CONFIG, "target_modules", "match no linear"],
            |d| {
                copy_fixture("tiny-llama-lora", d);
                edit_config(d, set("target_modules", json!(["query_key_value"])));
                let empty = safetensors::serialize(
                    Vec::<(&str, safetensors::tensor::TensorView<'_>)>::new(),
                    None,
                )
                .unwrap();
                std::fs::write(d.join(WEIGHTS), empty).unwrap();
                onto_model(d)
            },
        ),
        // PEFT's trainable_token_indices: rows past the vocabulary, rows without their values.
        Case::new(
            "ad-token-index-past-vocab",
            &["trainable_token_indices", "past the table"],
            |d| {
                copy_fixture("tiny-llama-lora", d);
                edit_config(d, set("trainable_token_indices", json!([5, 100000])));
                onto_model(d)
            },
        ),
        Case::new(
            "ad-token-rows-missing",
            &["model.embed_tokens", "trainable_tokens_delta"],
            |d| {
                copy_fixture("tiny-llama-lora", d);
                edit_config(d, set("trainable_token_indices", json!([5])));
                onto_model(d)
            },
        ),
    ]
}
