//! PEFT's `trainable_token_indices` and `ensure_weight_tying` on the tied (qwen2) and untied
//! (llama) golden families, against PEFT 0.21.2's own folders and numbers
//! (`tests/fixtures/trainable-tokens/<case>`, made by
//! `tests/fixtures/scripts/make_trainable_tokens.py`): PEFT's adapter folder loads here with
//! PEFT's logits and one training step's loss and gradients (token rows, LoRA, whole tables);
//! saved again it has PEFT's keys and values; merged, the plain model gives the same logits; a
//! fresh adapter starts at the base's rows; bad configs are named errors.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LlamaForCausalLM, LoraModel};
use qlora_nn::{LoraApplier, LoraConfig, ModuleSelector, PeftAdapter, TrainableTokenIndices};
use safetensors::SafeTensors;

#[path = "support/logits.rs"]
mod logits;
use logits::{check, rel_err, st_f32s, st_i64s, values};

const CASES: [(&str, &str); 7] = [
    ("qwen2-list", "qwen2"),
    ("llama-list", "llama"),
    ("llama-dict", "llama"),
    ("qwen2-dict-apart", "qwen2"),
    ("qwen2-dict-tied", "qwen2"),
    ("qwen2-embed-saved", "qwen2"),
    ("qwen2-embed-saved-tied", "qwen2"),
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn base(family: &str, device: &Device) -> LlamaForCausalLM {
    let dir = fixtures()
        .join("golden/families")
        .join(family)
        .join("model");
    LlamaForCausalLM::load_hf(&dir, &LoraApplier::base_only(None, device)).unwrap()
}

fn ids(st: &SafeTensors<'_>, device: &Device) -> Tensor<2, Int> {
    let (v, s) = st_i64s(st, "input_ids");
    Tensor::from_data(TensorData::new(v, [s[0], s[1]]), device)
}

/// Every trained parameter of adapter `default` with PEFT's gradient name.
fn trained(model: &LlamaForCausalLM) -> Vec<(String, Tensor<2>)> {
    let mut v = Vec::new();
    for (path, l) in model.linears() {
        if let Some(a) = l.adapter("default") {
            v.push((format!("{path}.lora_A.weight"), a.lora_a.val()));
            v.push((format!("{path}.lora_B.weight"), a.lora_b.val()));
        }
    }
    for (path, t) in model.tables() {
        if t.is_require_grad() {
            v.push((path, t.val()));
        }
    }
    for (path, _, t) in model.token_tables() {
        if let Some(t) = t.get("default") {
            let key = format!("{path}.token_adapter.trainable_tokens_delta");
            v.push((key, t.delta.val()));
        }
    }
    v
}

#[test]
fn peft_trainable_token_folders_give_peft_logits_and_gradients() {
    let device = Device::flex().autodiff();
    for (case, family) in CASES {
        let dir = fixtures().join("trainable-tokens").join(case);
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let r = SafeTensors::deserialize(&bytes).unwrap();
        let ids = ids(&r, &device);
        let mut model = base(family, &device);
        let adapter = PeftAdapter::load(dir.join("adapter"), &device).unwrap();
        model.load_adapter(&adapter, "default").unwrap();
        let logits = values(model.forward(ids.clone(), None));
        check(
            &format!("{case} logits"),
            logits.clone(),
            &st_f32s(&r, "logits"),
            1e-5,
        );

        // One step: the fused loss and its gradients, against PEFT's.
        let loss = model.loss(ids.clone(), ids.clone());
        let l = values(loss.clone())[0];
        let want = st_f32s(&r, "loss")[0];
        assert!(
            (l - want).abs() <= 1e-5 * want.abs(),
            "{case}: loss {l} vs PEFT's {want}"
        );
        let grads = loss.backward();
        let params = trained(&model);
        let names: BTreeSet<String> = params.iter().map(|(n, _)| n.clone()).collect();
        let peft: BTreeSet<String> = r
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix("grad.").map(str::to_string))
            .collect();
        assert_eq!(names, peft, "{case}: the trained parameters are PEFT's");
        for (name, p) in params {
            let g = values(
                p.grad(&grads)
                    .unwrap_or_else(|| panic!("{case}: no grad {name}")),
            );
            let e = rel_err(&g, &st_f32s(&r, &format!("grad.{name}")));
            assert!(
                e < 1e-4,
                "{case}: gradient of {name} differs from PEFT's by {e:e}"
            );
        }

        // Saved again: PEFT's keys, the same values, and it loads back.
        let out = std::env::temp_dir().join(format!("qlora-tt-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        model
            .adapter("default", adapter.config.clone())
            .save(&out)
            .unwrap();
        let ours = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let ours = SafeTensors::deserialize(&ours).unwrap();
        let theirs = std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap();
        let theirs = SafeTensors::deserialize(&theirs).unwrap();
        let keys = |st: &SafeTensors<'_>| st.names().into_iter().map(str::to_string).collect();
        let (k_ours, k_theirs): (BTreeSet<String>, BTreeSet<String>) = (keys(&ours), keys(&theirs));
        assert_eq!(k_ours, k_theirs, "{case}: saved keys");
        for k in &k_ours {
            assert_eq!(st_f32s(&ours, k), st_f32s(&theirs, k), "{case}: saved {k}");
        }
        let saved_config = LoraConfig::load(out.join("adapter_config.json")).unwrap();
        assert_eq!(
            saved_config.trainable_token_indices, adapter.config.trainable_token_indices,
            "{case}"
        );
        assert_eq!(
            saved_config.ensure_weight_tying,
            adapter.config.ensure_weight_tying
        );
        let mut again = base(family, &device);
        again
            .load_adapter(&PeftAdapter::load(&out, &device).unwrap(), "default")
            .unwrap();
        assert_eq!(
            values(again.forward(ids.clone(), None)),
            logits,
            "{case}: reloaded"
        );
        std::fs::remove_dir_all(&out).unwrap();

        // Disabled, the base's logits (tables trained in full replace the base's, so only the
        // token cases); merged, the adapter's.
        if adapter.config.modules_to_save.is_none() {
            let plain = values(base(family, &device).forward(ids.clone(), None));
            model.set_adapters_disabled(true);
            assert_eq!(
                values(model.forward(ids.clone(), None)),
                plain,
                "{case}: disabled"
            );
            model.set_adapters_disabled(false);
        }
        let merged = model.merge_and_unload();
        assert!(merged.token_tables().iter().all(|(.., t)| !t.any_active()));
        check(
            &format!("{case} merged"),
            values(merged.forward(ids.clone(), None)),
            &logits,
            1e-5,
        );
    }
}

fn tokens_config(tokens: TrainableTokenIndices, ensure: bool) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: Some(ModuleSelector::List(vec!["q_proj".into()])),
        trainable_token_indices: Some(tokens),
        ensure_weight_tying: ensure,
        ..LoraConfig::default()
    }
}

#[test]
fn new_trainable_tokens_start_at_the_base_rows_and_train() {
    let device = Device::flex().autodiff();
    for family in ["qwen2", "llama"] {
        let bytes =
            std::fs::read(fixtures().join("trainable-tokens/qwen2-list/reference.safetensors"))
                .unwrap();
        let ids = ids(&SafeTensors::deserialize(&bytes).unwrap(), &device);
        let plain = values(base(family, &device).forward(ids.clone(), None));
        let config = tokens_config(TrainableTokenIndices::List(vec![5, 17, 300]), false);
        let dir = fixtures()
            .join("golden/families")
            .join(family)
            .join("model");
        let model =
            LlamaForCausalLM::load_hf(&dir, &LoraApplier::new(config, None, &device).unwrap())
                .unwrap();
        // LoRA B starts at zero and the rows at the base's: the base's logits (the trained
        // rows' head columns come from their own small matmul: rounding apart).
        check(
            &format!("{family} fresh"),
            values(model.forward(ids.clone(), None)),
            &plain,
            1e-6,
        );
        let ids_of = model.trained_param_ids("default");
        let delta = model
            .embed_tokens_rows
            .get("default")
            .unwrap()
            .delta
            .clone();
        assert!(
            ids_of.iter().any(|(id, _)| *id == delta.id),
            "{family}: rows are trained"
        );
        let grads = model.loss(ids.clone(), ids.clone()).backward();
        let g = values(delta.val().grad(&grads).unwrap());
        assert!(
            g.iter().any(|v| *v != 0.0) && g.iter().all(|v| v.is_finite()),
            "{family}"
        );
    }
}

#[test]
fn tied_tables_with_different_rows_under_ensure_weight_tying_are_refused() {
    let device = Device::flex();
    let rows = TrainableTokenIndices::ByModule(vec![
        ("embed_tokens".into(), vec![5, 17]),
        ("lm_head".into(), vec![17, 300]),
    ]);
    let dir = fixtures().join("golden/families/qwen2/model");
    let applier = LoraApplier::new(tokens_config(rows, true), None, &device).unwrap();
    let err = LlamaForCausalLM::load_hf(&dir, &applier)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trainable_token_indices") && err.contains("ensure_weight_tying"),
        "{err}"
    );
}

#[test]
fn bad_trainable_token_indices_are_named_errors() {
    let device = Device::flex();
    let dir = fixtures().join("golden/families/llama/model");
    let load = |tokens| {
        let applier = LoraApplier::new(tokens_config(tokens, false), None, &device)?;
        LlamaForCausalLM::load_hf(&dir, &applier).map(|_| ())
    };
    for (tokens, says) in [
        (
            TrainableTokenIndices::List(vec![5, 320]),
            "past the table's 320 rows",
        ),
        (TrainableTokenIndices::List(vec![5, 5]), "given twice"),
        (TrainableTokenIndices::List(vec![]), "no token indices"),
        (
            TrainableTokenIndices::ByModule(vec![("wte".into(), vec![1])]),
            "`wte` is not a table of this model",
        ),
    ] {
        let err = load(tokens).unwrap_err().to_string();
        assert!(
            err.contains("trainable_token_indices") && err.contains(says),
            "{err}"
        );
    }
    // PEFT: "The embedding layer is already marked to be trained fully".
    let mut c = tokens_config(TrainableTokenIndices::List(vec![1]), false);
    c.modules_to_save = Some(vec!["embed_tokens".into()]);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("modules_to_save"), "{err}");
}

#[test]
fn an_adapter_whose_token_rows_are_missing_from_its_file_is_refused() {
    let device = Device::flex();
    let mut adapter = PeftAdapter::load(
        fixtures().join("trainable-tokens/llama-dict/adapter"),
        &device,
    )
    .unwrap();
    adapter.tokens.remove("lm_head");
    let mut model = base("llama", &device);
    let err = model
        .load_adapter(&adapter, "default")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lm_head") && err.contains("trainable_tokens_delta"),
        "{err}"
    );
    // Nothing changed.
    assert!(model.token_tables().iter().all(|(.., t)| !t.any_active()));
}
