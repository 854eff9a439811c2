//! Gemma 3 beyond the golden checks of `families.rs`: its config (layer types, a RoPE per layer
//! type, scales; transformers 4's form and the class defaults; the settings it lacks as named
//! errors) and the multimodal checkpoints whose text model it reads.

use std::path::PathBuf;

use burn::tensor::Device;
use qlora_llama::{LlamaConfig, LoraModel, ModelType, SaveFormat};
use qlora_nf4::QuantConfig;
use qlora_nn::PeftAdapter;

#[path = "support/family.rs"]
mod golden_families;
use golden_families::{Reference, family, load};
#[path = "support/logits.rs"]
mod logits;
use logits::{check, values};

#[test]
fn gemma3_reads_its_layer_types_ropes_and_scales() {
    use qlora_llama::{HiddenAct, LayerType, RopeScaling};
    let c = LlamaConfig::load(family("gemma3").join("model/config.json")).unwrap();
    assert_eq!(
        (0..3).map(|i| c.layer_type(i)).collect::<Vec<_>>(),
        [LayerType::Sliding, LayerType::Full, LayerType::Sliding]
    );
    assert_eq!(
        (0..3).map(|i| c.layer_window(i)).collect::<Vec<_>>(),
        [Some(6), None, Some(6)]
    );
    assert_eq!((c.layer_rope(0).theta, c.layer_rope(1).theta), (1e4, 1e6));
    assert_eq!(c.layer_rope(1).scaling, RopeScaling::Default);
    // query_pre_attn_scalar 24, not head_dim 32.
    assert_eq!(c.attention_scale(), 1.0 / 24f64.sqrt());
    assert!(c.norm_unit_offset && c.scale_embeddings && c.sandwich_norms && c.qk_norm);
    assert_eq!(c.hidden_act, HiddenAct::GeluTanh);
    assert!(c.tie_word_embeddings);
    // Written back (transformers 5's form), it reads as the same.
    let text = c.to_hf_json();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["model_type"], "gemma3_text");
    assert_eq!(v["hidden_activation"], "gelu_pytorch_tanh");
    assert!(v.get("hidden_act").is_none());
    // transformers 4's fields beside 5's per-type `rope_parameters`.
    assert_eq!(
        (
            &v["rope_theta"],
            &v["rope_local_base_freq"],
            &v["rope_scaling"]
        ),
        (
            &serde_json::json!(1e6),
            &serde_json::json!(1e4),
            &serde_json::Value::Null
        )
    );
    // An `int` in transformers' strict `Gemma3TextConfig`.
    assert!(
        v["query_pre_attn_scalar"].is_u64(),
        "{}",
        v["query_pre_attn_scalar"]
    );
    assert_eq!(LlamaConfig::from_json_str(&text, "config.json").unwrap(), c);
}

/// The gemma3 golden config with the fields of `extra` set (`null` removes a field).
fn gemma_config_with(extra: serde_json::Value) -> Result<LlamaConfig, String> {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family("gemma3").join("model/config.json")).unwrap(),
    )
    .unwrap();
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    LlamaConfig::from_json_str(&v.to_string(), "config.json").map_err(|e| e.to_string())
}

#[test]
fn gemma3_config_defaults_and_transformers4_form() {
    use qlora_llama::{LayerType, RopeScaling};
    // Without `layer_types`, every 6th layer is full (`sliding_window_pattern`); transformers
    // 4's `rope_theta` + `rope_scaling` are the full layers' RoPE, `rope_local_base_freq` the
    // sliding ones'.
    let c = gemma_config_with(serde_json::json!({
        "num_hidden_layers": 7,
        "layer_types": null,
        "_sliding_window_pattern": null,
        "rope_parameters": null,
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "query_pre_attn_scalar": null,
    }))
    .unwrap();
    let types: Vec<LayerType> = (0..7).map(|i| c.layer_type(i)).collect();
    assert_eq!(types[5], LayerType::Full);
    assert!(
        types
            .iter()
            .enumerate()
            .all(|(i, t)| (i == 5) == (*t == LayerType::Full))
    );
    assert_eq!(c.layer_rope(5).scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(c.layer_rope(0).theta, 1e4);
    assert_eq!(c.layer_rope(0).scaling, RopeScaling::Default);
    // Gemma3TextConfig's default scalar.
    assert_eq!(c.query_pre_attn_scalar, Some(256.0));
    // Entries without a base take the top-level ones; `rope_scaling` joins the full layers'.
    let c = gemma_config_with(serde_json::json!({
        "rope_parameters": {"full_attention": {"rope_type": "default"}},
        "rope_theta": 5e5,
        "rope_local_base_freq": 2e4,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0},
    }))
    .unwrap();
    assert_eq!(c.layer_rope(1).theta, 5e5);
    assert_eq!(c.layer_rope(1).scaling, RopeScaling::Linear { factor: 4.0 });
    assert_eq!(
        (c.layer_rope(0).theta, &c.layer_rope(0).scaling),
        (2e4, &RopeScaling::Default)
    );
    // A field given as `null` stays unset (no pad token), as the dataclass keeps it; absent, it
    // takes the class default (pad 0); either way the config reads back the same.
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family("gemma3").join("model/config.json")).unwrap(),
    )
    .unwrap();
    v["pad_token_id"] = serde_json::Value::Null;
    v["eos_token_id"] = serde_json::Value::Null;
    let c = LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap();
    assert_eq!((c.pad_token_id, c.eos_token_ids.clone()), (None, vec![]));
    assert_eq!(
        LlamaConfig::from_json_str(&c.to_hf_json(), "config.json").unwrap(),
        c
    );
    v.as_object_mut().unwrap().remove("pad_token_id");
    let c = LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap();
    assert_eq!(c.pad_token_id, Some(0));
    // A `null` window with sliding layers is an error (transformers fails there too).
    v["sliding_window"] = serde_json::Value::Null;
    let e = LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap_err();
    assert!(e.to_string().contains("sliding_window"), "{e}");
}

#[test]
fn gemma3_settings_it_lacks_are_named_errors() {
    for (field, value, says) in [
        (
            "final_logit_softcapping",
            serde_json::json!(30.0),
            "softcapping",
        ),
        (
            "attn_logit_softcapping",
            serde_json::json!(50.0),
            "softcapping",
        ),
        (
            "use_bidirectional_attention",
            serde_json::json!(true),
            "bidirectional",
        ),
        ("hidden_activation", serde_json::json!("relu"), "relu"),
        (
            "layer_types",
            serde_json::json!(["full_attention"]),
            "1 entries",
        ),
        ("query_pre_attn_scalar", serde_json::json!(0), "positive"),
    ] {
        let e = gemma_config_with(serde_json::json!({ field: value })).unwrap_err();
        assert!(e.contains(field) && e.contains(says), "{field}: {e}");
    }
}

/// The multimodal Gemma 3 (`Gemma3ForConditionalGeneration`, `tests/fixtures/gemma3-multimodal`,
/// made by `tests/fixtures/scripts/make_gemma3_multimodal.py` around the golden text model):
/// its text model loads from either layout (`saved/`: `language_model.model.*` as
/// `save_pretrained` writes it; `modules/`: `model.language_model.*`), float and quantized on
/// load, and gives the golden text model's logits; PEFT's adapter of the multimodal model
/// (modules `model.language_model.layers.*`) applies and is written back under PEFT's names, as
/// is the text model's adapter (`model.layers.*`); it saves as the text model (`gemma3_text`).
#[test]
fn gemma3_multimodal_checkpoints_load_their_text_model() {
    let device = Device::flex();
    let r = Reference::open("gemma3");
    let ids = r.input_ids(&device);
    let adapter = PeftAdapter::load(family("gemma3").join("adapter"), &device).unwrap();
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gemma3-multimodal");
    for layout in ["saved", "modules"] {
        let dir = root.join(layout);
        let mut model = load(dir.clone(), None, &device);
        assert_eq!(model.config.model_type, ModelType::Gemma3);
        check(
            &format!("gemma3 multimodal ({layout}) logits_fp32"),
            values(model.forward(ids.clone(), None)),
            &r.f32s("logits_fp32"),
            1e-4,
        );
        let quantized = load(dir.clone(), Some(QuantConfig::qlora()), &device);
        check(
            &format!("gemma3 multimodal ({layout}) logits_nf4"),
            values(quantized.forward(ids.clone(), None)),
            &r.f32s("logits_nf4"),
            2e-3,
        );
        let peft_mm = PeftAdapter::load(root.join("adapter"), &device).unwrap();
        let mut text = model.clone();
        text.load_adapter(&adapter, "default").unwrap();
        model.load_adapter(&peft_mm, "default").unwrap();
        for (which, m) in [("text model's", &text), ("multimodal model's", &model)] {
            check(
                &format!("gemma3 multimodal ({layout}) logits_lora, the {which} adapter"),
                values(m.forward(ids.clone(), None)),
                &r.f32s("logits_lora"),
                1e-4,
            );
        }
        // Written back under PEFT's names for the multimodal model.
        let mut ours: Vec<String> = model
            .adapter("default", peft_mm.config.clone())
            .modules
            .into_keys()
            .collect();
        let mut theirs: Vec<String> = peft_mm.modules.keys().cloned().collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        assert!(
            theirs[0].starts_with("model.language_model.layers."),
            "{}",
            theirs[0]
        );
        let merged = model.merge_and_unload();
        let out =
            std::env::temp_dir().join(format!("qlora-gemma3-mm-{layout}-{}", std::process::id()));
        merged.save_hf(&out, SaveFormat::F32).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], "gemma3_text");
        let back = load(out.clone(), None, &device);
        check(
            &format!("gemma3 multimodal ({layout}) saved as text"),
            values(back.forward(ids.clone(), None)),
            &r.f32s("logits_lora"),
            1e-4,
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    // A text_config of another family is refused by name.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("saved/config.json")).unwrap())
            .unwrap();
    v["text_config"]["model_type"] = "gemma2".into();
    let e = LlamaConfig::from_json_str(&v.to_string(), "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("text_config.model_type") && e.contains("gemma2"),
        "{e}"
    );
}
