//! `LoraConfig` reading/writing and PEFT's matching rules.

use std::path::PathBuf;

use qlora_nn::{
    InitLoraWeights, LayerIndices, LoraConfig, LoraError, LoraMatcher, ModuleKind, ModuleSelector,
};

fn golden_config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/tiny-llama-lora/adapter_config.json")
}

fn with_targets(t: ModuleSelector) -> LoraConfig {
    LoraConfig {
        target_modules: Some(t),
        ..LoraConfig::default()
    }
}

fn names(v: &[&str]) -> ModuleSelector {
    ModuleSelector::List(v.iter().map(|s| s.to_string()).collect())
}

#[test]
fn reads_the_golden_peft_config() {
    let c = LoraConfig::load(golden_config_path()).unwrap();
    assert_eq!(c.r, 8);
    assert_eq!(c.lora_alpha, 16.0);
    assert_eq!(c.init_lora_weights, InitLoraWeights::Random);
    let m = LoraMatcher::new(&c).unwrap();
    assert_eq!(m.scaling("model.layers.0.self_attn.q_proj"), 2.0);
    for p in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ] {
        let path = if p.ends_with("proj") && ["gate_proj", "up_proj", "down_proj"].contains(&p) {
            format!("model.layers.1.mlp.{p}")
        } else {
            format!("model.layers.1.self_attn.{p}")
        };
        assert!(m.is_target(&path, ModuleKind::Linear), "{path}");
    }
    assert!(!m.is_target("lm_head", ModuleKind::OutputHead));
    assert!(!m.is_target("model.embed_tokens", ModuleKind::Other));
}

#[test]
fn written_json_has_peft_fields_and_reads_back() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden_config_path()).unwrap()).unwrap();
    let c = LoraConfig::load(golden_config_path()).unwrap();
    let text = c.to_peft_json();
    let ours: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Every field PEFT wrote is written, with the same value, except the version PEFT stamps.
    for (k, v) in golden.as_object().unwrap() {
        if k == "peft_version" {
            continue;
        }
        assert_eq!(ours.get(k), Some(v), "field `{k}`");
    }
    // Keys sorted like save_pretrained's json.dumps(sort_keys=True).
    let keys: Vec<&String> = ours.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(
        LoraConfig::from_json_bytes(text.as_bytes(), "<written>").unwrap(),
        c
    );
}

#[test]
fn unknown_and_unsupported_fields_are_named() {
    let base = std::fs::read_to_string(golden_config_path()).unwrap();
    let e = LoraConfig::from_json_bytes(
        base.replace("\"r\": 8", "\"r\": 8, \"rank\": 4").as_bytes(),
        "cfg.json",
    )
    .unwrap_err();
    assert!(
        matches!(&e, LoraError::UnknownField { field, .. } if field == "rank"),
        "{e}"
    );
    assert!(e.to_string().contains("cfg.json"));
    let e = LoraConfig::from_json_bytes(
        base.replace("\"use_dora\": false", "\"use_dora\": \"yes\"")
            .as_bytes(),
        "cfg.json",
    )
    .unwrap_err();
    assert!(e.to_string().contains("use_dora"), "{e}");
    let e = LoraConfig::from_json_bytes(
        base.replace(
            "\"init_lora_weights\": false",
            "\"init_lora_weights\": \"olora\"",
        )
        .as_bytes(),
        "c",
    )
    .unwrap_err();
    assert!(e.to_string().contains("init_lora_weights"), "{e}");
    // PiSSA is read (issue #26), in both of PEFT's spellings.
    for (s, v) in [
        ("pissa", InitLoraWeights::Pissa { niter: None }),
        ("pissa_niter_4", InitLoraWeights::Pissa { niter: Some(4) }),
    ] {
        let json = base.replace(
            "\"init_lora_weights\": false",
            &format!("\"init_lora_weights\": \"{s}\""),
        );
        let c = LoraConfig::from_json_bytes(json.as_bytes(), "c").unwrap();
        assert_eq!(c.init_lora_weights, v);
    }
    let e = LoraConfig::from_json_bytes(base.replace("\"r\": 8", "\"r\": 0").as_bytes(), "c")
        .unwrap_err();
    assert!(e.to_string().contains("`r`"), "{e}");
    let e =
        LoraConfig::from_json_bytes(base.replace("\"r\": 8", "\"r\": \"eight\"").as_bytes(), "c")
            .unwrap_err();
    assert!(e.to_string().contains("`r`"), "{e}");
    let e = LoraConfig::from_json_bytes(b"[1, 2]", "c").unwrap_err();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
    let e = LoraConfig::from_json_bytes(b"{\"r\": 8,", "c").unwrap_err();
    assert!(matches!(e, LoraError::Json { .. }), "{e}");
    let e = LoraConfig::from_json_bytes(b"{\"target_modules\": \"(unclosed\"}", "c").unwrap_err();
    assert!(
        e.to_string().contains("target_modules") && e.to_string().contains("does not compile"),
        "{e}"
    );
    let e = LoraConfig::from_json_bytes(b"{\"peft_type\": \"IA3\"}", "c").unwrap_err();
    assert!(e.to_string().contains("peft_type"), "{e}");
    assert!(
        LoraConfig::load("/nonexistent/adapter_config.json")
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/adapter_config.json")
    );
}

#[test]
fn list_targets_match_exact_names_and_dotted_suffixes() {
    let m = LoraMatcher::new(&with_targets(names(&["q_proj", "mlp.up_proj"]))).unwrap();
    assert!(m.is_target("model.layers.0.self_attn.q_proj", ModuleKind::Linear));
    assert!(m.is_target("q_proj", ModuleKind::Linear));
    assert!(m.is_target("model.layers.0.mlp.up_proj", ModuleKind::Linear));
    assert!(!m.is_target("model.layers.0.self_attn.xq_proj", ModuleKind::Linear));
    assert!(!m.is_target("model.layers.0.self_attn.k_proj", ModuleKind::Linear));
}

#[test]
fn string_targets_are_full_regex_matches() {
    let m = LoraMatcher::new(&with_targets(ModuleSelector::Pattern(
        r".*\.(q|v)_proj".into(),
    )))
    .unwrap();
    assert!(m.is_target("model.layers.0.self_attn.q_proj", ModuleKind::Linear));
    assert!(!m.is_target("model.layers.0.self_attn.q_proj.lora", ModuleKind::Linear));
    let m = LoraMatcher::new(&with_targets(ModuleSelector::Pattern("q_proj".into()))).unwrap();
    assert!(
        !m.is_target("model.layers.0.self_attn.q_proj", ModuleKind::Linear),
        "a regex must match the whole path"
    );
}

#[test]
fn all_linear_skips_the_head_and_non_linears() {
    let m = LoraMatcher::new(&with_targets(ModuleSelector::Pattern("all-linear".into()))).unwrap();
    assert!(m.is_target("model.layers.0.mlp.down_proj", ModuleKind::Linear));
    assert!(!m.is_target("lm_head", ModuleKind::OutputHead));
    assert!(!m.is_target("model.norm", ModuleKind::Other));
}

#[test]
fn exclude_modules_win() {
    let mut c = with_targets(names(&["q_proj", "v_proj"]));
    c.exclude_modules = Some(names(&["layers.1.self_attn.v_proj"]));
    let m = LoraMatcher::new(&c).unwrap();
    assert!(m.is_target("model.layers.0.self_attn.v_proj", ModuleKind::Linear));
    assert!(!m.is_target("model.layers.1.self_attn.v_proj", ModuleKind::Linear));
    c.exclude_modules = Some(ModuleSelector::Pattern(r".*layers\.0\..*".into()));
    let m = LoraMatcher::new(&c).unwrap();
    assert!(!m.is_target("model.layers.0.self_attn.q_proj", ModuleKind::Linear));
    assert!(m.is_target("model.layers.2.self_attn.q_proj", ModuleKind::Linear));
}

#[test]
fn layers_to_transform_with_and_without_pattern() {
    let mut c = with_targets(names(&["q_proj"]));
    c.layers_to_transform = Some(LayerIndices::Many(vec![0, 2]));
    let m = LoraMatcher::new(&c).unwrap();
    assert!(m.is_target("model.layers.0.self_attn.q_proj", ModuleKind::Linear));
    assert!(!m.is_target("model.layers.1.self_attn.q_proj", ModuleKind::Linear));
    assert!(m.is_target("model.layers.2.self_attn.q_proj", ModuleKind::Linear));
    c.layers_to_transform = Some(LayerIndices::One(1));
    c.layers_pattern = Some(qlora_nn::LayersPattern::One("blocks".into()));
    let m = LoraMatcher::new(&c).unwrap();
    assert!(m.is_target("net.blocks.1.attn.q_proj", ModuleKind::Linear));
    assert!(
        !m.is_target("model.layers.1.self_attn.q_proj", ModuleKind::Linear),
        "pattern `blocks` finds no index here"
    );
}

#[test]
fn rank_and_alpha_patterns_and_rslora() {
    let mut c = with_targets(names(&["q_proj", "v_proj"]));
    c.r = 8;
    c.lora_alpha = 16.0;
    c.rank_pattern = vec![
        (r"layers\.0\.self_attn\.q_proj".into(), 4),
        ("v_proj".into(), 2),
    ];
    c.alpha_pattern = vec![("q_proj".into(), 32.0)];
    let m = LoraMatcher::new(&c).unwrap();
    assert_eq!(m.rank("model.layers.0.self_attn.q_proj"), 4);
    assert_eq!(m.rank("model.layers.1.self_attn.q_proj"), 8);
    assert_eq!(m.rank("model.layers.1.self_attn.v_proj"), 2);
    assert_eq!(m.alpha("model.layers.1.self_attn.q_proj"), 32.0);
    assert_eq!(m.scaling("model.layers.0.self_attn.q_proj"), 8.0);
    assert_eq!(m.scaling("model.layers.1.self_attn.v_proj"), 8.0);
    c.use_rslora = true;
    let m = LoraMatcher::new(&c).unwrap();
    assert_eq!(
        m.scaling("model.layers.1.self_attn.v_proj"),
        16.0 / 2f64.sqrt()
    );
    assert_eq!(m.scaling("model.layers.0.self_attn.q_proj"), 32.0 / 2.0);
}

/// PEFT's `trainable_token_indices` (a list, or a dict by table in file order) and
/// `ensure_weight_tying`, as PEFT 0.21.2 wrote them (`tests/fixtures/trainable-tokens`): read,
/// written back with the same values, and read again equal.
#[test]
fn trainable_token_indices_and_ensure_weight_tying_round_trip() {
    use qlora_nn::TrainableTokenIndices;
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/trainable-tokens");
    let cases = [
        (
            "llama-list",
            TrainableTokenIndices::List(vec![5, 17, 300]),
            false,
        ),
        (
            "llama-dict",
            TrainableTokenIndices::ByModule(vec![
                ("embed_tokens".into(), vec![5, 17]),
                ("lm_head".into(), vec![17, 300, 301]),
            ]),
            false,
        ),
        (
            "qwen2-dict-tied",
            TrainableTokenIndices::ByModule(vec![
                ("embed_tokens".into(), vec![5, 17, 300]),
                ("lm_head".into(), vec![5, 17, 300]),
            ]),
            true,
        ),
    ];
    for (case, tokens, ensure) in cases {
        let path = dir.join(case).join("adapter/adapter_config.json");
        let c = LoraConfig::load(&path).unwrap();
        assert_eq!(c.trainable_token_indices, Some(tokens), "{case}");
        assert_eq!(c.ensure_weight_tying, ensure, "{case}");
        let peft: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&c.to_peft_json()).unwrap();
        for k in ["trainable_token_indices", "ensure_weight_tying"] {
            assert_eq!(ours[k], peft[k], "{case}: {k}");
        }
        assert_eq!(
            LoraConfig::from_json_bytes(c.to_peft_json().as_bytes(), "<written>").unwrap(),
            c
        );
    }
    let bad = r#"{"r": 4, "target_modules": ["q_proj"], "trainable_token_indices": "embed"}"#;
    let e = LoraConfig::from_json_bytes(bad.as_bytes(), "cfg.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cfg.json") && e.contains("trainable_token_indices"),
        "{e}"
    );
}
