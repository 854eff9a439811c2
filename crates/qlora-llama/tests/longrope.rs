//! Phi-3 with LongRoPE (`tests/fixtures/phi3-longrope/`, the golden phi3 weights under a
//! `longrope` config, made by `tests/fixtures/scripts/make_phi3_longrope.py` with transformers
//! 5.23): a pass within the original context (8) takes the short factors, a longer one the long
//! factors, both with cos and sin scaled by the derived attention factor; greedy decoding
//! recomputes its cache once the sequence passes the original context, as transformers' Phi-3
//! generation does. Logits within 1e-4, greedy ids identical, the config written back the same.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LlamaConfig, LlamaForCausalLM, RopeScaling};
use qlora_nn::LoraApplier;
use safetensors::SafeTensors;

#[path = "support/family.rs"]
mod golden_families;
use golden_families::greedy_after;
#[path = "support/logits.rs"]
mod logits;
use logits::{check, st_f32s, st_i64s, values};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn phi3_longrope_matches_transformers_within_and_past_the_original_context() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("qlora-longrope-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("phi3-longrope/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("golden/families/phi3/model/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let model = LlamaForCausalLM::load_hf(&dir, &LoraApplier::base_only(None, &device)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let c = &model.config;
    let RopeScaling::LongRope {
        original_max_position_embeddings,
        attention_factor,
        ..
    } = &c.rope.scaling
    else {
        panic!("{:?}", c.rope.scaling)
    };
    // sqrt(1 + ln(256 / 8) / ln 8)
    assert_eq!(*original_max_position_embeddings, 8);
    assert!((attention_factor - (1.0 + 32f64.ln() / 8f64.ln()).sqrt()).abs() < 1e-12);
    assert_eq!(
        &LlamaConfig::from_json_str(&c.to_hf_json(), "config.json").unwrap(),
        c
    );

    let golden =
        std::fs::read(fixtures().join("golden/families/phi3/reference.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&golden).unwrap();
    let want = std::fs::read(fixtures().join("phi3-longrope/reference.safetensors")).unwrap();
    let want = SafeTensors::deserialize(&want).unwrap();
    let (ids, shape) = st_i64s(&golden, "input_ids");
    let short: Vec<i64> = ids
        .chunks(shape[1])
        .flat_map(|row| row[..8].to_vec())
        .collect();
    let ids: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let short: Tensor<2, Int> = Tensor::from_data(TensorData::new(short, [shape[0], 8]), &device);
    check(
        "longrope, 20 positions (long factors)",
        values(model.forward(ids, None)),
        &st_f32s(&want, "logits_long"),
        1e-4,
    );
    check(
        "longrope, 8 positions (short factors)",
        values(model.forward(short, None)),
        &st_f32s(&want, "logits_short"),
        1e-4,
    );
    let got = greedy_after(&model, &st_i64s(&golden, "prompt").0);
    assert_eq!(got, st_i64s(&want, "greedy_fp32").0, "greedy ids");
}

/// `Phi3Config` always has a top-level `original_max_position_embeddings` (default 4096) and
/// it wins over the RoPE's own; `su` and `yarn` are its older names of LongRoPE.
#[test]
fn phi3_longrope_reads_its_context_as_phi3config_does() {
    let text = std::fs::read_to_string(fixtures().join("phi3-longrope/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut()
        .unwrap()
        .remove("original_max_position_embeddings");
    v["rope_parameters"]["original_max_position_embeddings"] = 8.into();
    v["rope_parameters"]["rope_type"] = "su".into();
    let c = LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap();
    let RopeScaling::LongRope {
        original_max_position_embeddings,
        attention_factor,
        ..
    } = c.rope.scaling
    else {
        panic!("{:?}", c.rope.scaling)
    };
    assert_eq!(original_max_position_embeddings, 4096);
    // max_position_embeddings 256 < 4096: no scaling.
    assert_eq!(attention_factor, 1.0);
}

#[test]
fn longrope_factors_of_the_wrong_length_are_named_errors() {
    let text = std::fs::read_to_string(fixtures().join("phi3-longrope/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rope_parameters"]["long_factor"] = serde_json::json!([1.0, 2.0]);
    let e = LlamaConfig::from_json_str(&v.to_string(), "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("long_factor") && e.contains("2 factors for 6"),
        "{e}"
    );
    v["rope_parameters"]["long_factor"] = serde_json::json!("x");
    let e = LlamaConfig::from_json_str(&v.to_string(), "config.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("long_factor"), "{e}");
}
