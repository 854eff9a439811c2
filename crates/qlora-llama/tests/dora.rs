//! DoRA (`use_dora`, issue #26) on the golden tiny LLaMA against PEFT 0.21.2
//! (`tests/fixtures/dora/`, made by `tests/fixtures/scripts/make_dora.py`), on the fp32 base and
//! on the bnb-4bit one (QDoRA): the magnitudes a new adapter starts with, the logits of PEFT's
//! saved DoRA adapter, one training step's loss and the gradients of A, B and the magnitude,
//! the merged model's logits; our saved folder has PEFT's keys and config and loads back to the
//! same outputs; the fused single-adapter path equals the composed one.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use qlora_llama::LlamaForCausalLM;
use qlora_nf4::QuantConfig;
use qlora_nn::{LoraAdapter, LoraApplier, LoraConfig, LoraModel, ModuleSelector, PeftAdapter};

#[path = "support/init_refs.rs"]
mod init_refs;
#[path = "support/logits.rs"]
mod logits;
use init_refs::{f32_tensors, fixture, input_ids};
use logits::{rel_err, values};

const REFERENCE: &str = "dora/dora.safetensors";

/// A base the fixture covers: `(name, folder, quantization)`.
type BaseCase = (&'static str, &'static str, Option<fn() -> QuantConfig>);

const BASES: [BaseCase; 2] = [
    ("fp32", "golden/families/llama/model", None),
    (
        "nf4",
        "golden/families/llama/model-nf4",
        Some(QuantConfig::qlora),
    ),
];

fn reference() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    f32_tensors(REFERENCE)
}

/// The magnitude of the model's first adapted linear.
fn first_magnitude(model: &LlamaForCausalLM) -> Vec<f32> {
    let layer = &model.linears()[0].1;
    let m = layer.adapter("default").unwrap().magnitude.as_ref();
    values(m.expect("a DoRA adapter").val())
}

fn dora_config() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
        use_dora: true,
        ..LoraConfig::default()
    }
}

/// The base `folder` with PEFT's DoRA adapter loaded as `default`.
fn with_peft_adapter(
    folder: &str,
    quant: Option<QuantConfig>,
    device: &Device,
) -> LlamaForCausalLM {
    let applier = LoraApplier::base_only(quant, device);
    let mut model = LlamaForCausalLM::load(fixture(folder), &applier).unwrap();
    let adapter = PeftAdapter::load(fixture("dora/adapter"), device).unwrap();
    assert!(adapter.config.use_dora);
    model.load_adapter(&adapter, "default").unwrap();
    model
}

/// Every linear's base weight, `[out, in]` each.
fn weights(m: &LlamaForCausalLM) -> Vec<Vec<f32>> {
    m.linears()
        .into_iter()
        .map(|(_, l)| values(l.base_weight().unwrap()))
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: not finite");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: an all-zero reference");
    for (k, (x, y)) in got.iter().zip(want).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{k}]: {x} vs PEFT's {y}"
        );
    }
}

#[test]
fn new_dora_adapters_start_with_peft_s_magnitudes() {
    let refs = reference();
    for (base, folder, quant) in BASES {
        let applier = LoraApplier::new(dora_config(), quant.map(|q| q()), &Device::flex()).unwrap();
        let model = LlamaForCausalLM::load(fixture(folder), &applier).unwrap();
        let mut compared = 0;
        for (path, layer) in model.linears() {
            let a = layer.adapter("default").expect("all-linear");
            let m = values(a.magnitude.as_ref().expect("a DoRA adapter").val());
            let (_, want) = &refs[&format!("{base}.init.{path}")];
            assert_close(&format!("{base} {path} magnitude"), &m, want, 1e-6);
            compared += 1;
        }
        assert_eq!(
            compared, 21,
            "{base}: seven linears in each of three layers"
        );
    }
}

#[test]
fn peft_s_dora_adapter_gives_peft_s_logits() {
    let refs = reference();
    let device = Device::flex();
    for (base, folder, quant) in BASES {
        let model = with_peft_adapter(folder, quant.map(|q| q()), &device);
        let got = values(model.forward(input_ids(REFERENCE, &device), None));
        let (_, want) = &refs[&format!("{base}.logits")];
        assert_close(&format!("{base} logits"), &got, want, 1e-4);
    }
}

#[test]
fn one_dora_step_gives_peft_s_loss_and_gradients() {
    let refs = reference();
    let device = Device::flex().autodiff();
    for (base, folder, quant) in BASES {
        let mut model = with_peft_adapter(folder, quant.map(|q| q()), &device);
        let ids = input_ids(REFERENCE, &device);
        let loss = model.loss(ids.clone(), ids.clone());
        let got = values(loss.clone())[0];
        let want = refs[&format!("{base}.loss")].1[0];
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{base}: loss {got} vs PEFT's {want}"
        );
        let grads = loss.backward();
        let (mut worst, mut compared) = (0f32, 0);
        for (path, layer) in model.linears() {
            let a = layer.adapter("default").unwrap();
            let m = a.magnitude.as_ref().unwrap();
            let pairs: [(Option<Vec<f32>>, &str); 3] = [
                (a.lora_a.val().grad(&grads).map(values), "lora_A"),
                (a.lora_b.val().grad(&grads).map(values), "lora_B"),
                (m.val().grad(&grads).map(values), "lora_magnitude_vector"),
            ];
            for (got, which) in pairs {
                let got = got.unwrap_or_else(|| panic!("{base} {path}: no {which} gradient"));
                let (_, want) = &refs[&format!("{base}.grad.{path}.{which}")];
                worst = worst.max(rel_err(&got, want));
                compared += 1;
            }
        }
        assert_eq!(compared, 63, "{base}: A, B and m of 21 layers");
        eprintln!("{base}: DoRA gradients within {worst:e} of PEFT's");
        assert!(
            worst < 1e-4,
            "{base}: gradients differ from PEFT's by {worst:e}"
        );

        // And the magnitude trains: AdamW steps move it and lower the loss.
        let before = first_magnitude(&model);
        let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(0.0).init();
        for _ in 0..5 {
            let loss = model.loss(ids.clone(), ids.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let after = first_magnitude(&model);
        assert!(before != after, "{base}: the magnitude did not train");
        let last = values(model.loss(ids.clone(), ids))[0];
        assert!(last < got, "{base}: loss {got} -> {last} after 5 steps");
    }
}

#[test]
fn merged_dora_model_gives_peft_s_merged_logits_and_unmerges() {
    let refs = reference();
    let device = Device::flex();
    let ids = input_ids(REFERENCE, &device);
    let mut model = with_peft_adapter(BASES[0].1, None, &device);
    let unmerged = values(model.forward(ids.clone(), None));
    let original = weights(&model);

    model.merge_adapters().unwrap();
    let merged = values(model.forward(ids.clone(), None));
    let (_, want) = &refs["fp32.logits_merged"];
    assert_close("merged logits", &merged, want, 1e-4);
    assert_close("merged vs unmerged logits", &merged, &unmerged, 1e-4);
    model.unmerge_adapters().unwrap();
    for (k, (w, o)) in weights(&model).iter().zip(&original).enumerate() {
        assert_close(&format!("layer {k} unmerged weight"), w, o, 1e-5);
    }
    assert_close(
        "logits after unmerge",
        &values(model.forward(ids.clone(), None)),
        &unmerged,
        1e-5,
    );

    let unloaded = model.merge_and_unload();
    assert_close(
        "merge_and_unload logits",
        &values(unloaded.forward(ids, None)),
        want,
        1e-4,
    );
}

#[test]
fn saved_dora_adapter_has_peft_s_keys_and_loads_back() {
    let device = Device::flex();
    let model = with_peft_adapter(BASES[0].1, None, &device);
    let dir = std::env::temp_dir().join(format!("qlora-dora-save-{}", std::process::id()));
    model.adapter("default", dora_config()).save(&dir).unwrap();
    let keys = |p: PathBuf| -> BTreeSet<String> {
        let bytes = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.names().into_iter().map(String::from).collect()
    };
    let ours = keys(dir.clone());
    assert_eq!(ours, keys(fixture("dora/adapter")));
    assert_eq!(
        ours.iter()
            .filter(|k| k.ends_with(".lora_magnitude_vector"))
            .count(),
        21
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["use_dora"], serde_json::Value::Bool(true));

    let ids = input_ids(REFERENCE, &device);
    let again = {
        let applier = LoraApplier::base_only(None, &device);
        let mut m = LlamaForCausalLM::load(fixture(BASES[0].1), &applier).unwrap();
        m.load_adapter(&PeftAdapter::load(&dir, &device).unwrap(), "default")
            .unwrap();
        values(m.forward(ids.clone(), None))
    };
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(again, values(model.forward(ids, None)), "bit for bit");
}

#[test]
fn fused_and_composed_dora_paths_agree_on_a_4_bit_base() {
    // One DoRA adapter runs through the fused NF4 + LoRA op, scaled; with a second adapter that
    // adds nothing (B = 0) the layer takes the composed path. Same outputs and gradients.
    let device = Device::flex().autodiff();
    let ids = input_ids(REFERENCE, &device);
    let one = with_peft_adapter(BASES[1].1, Some(QuantConfig::qlora()), &device);
    let mut two = one.clone();
    for (_, layer) in two.linears_mut() {
        let a = layer.adapter("default").unwrap();
        let zero = LoraAdapter::from_weights(
            a.lora_a.val().detach(),
            a.lora_b.val().detach().zeros_like(),
            a.scaling,
            0.0,
        );
        let adapters = layer.adapters_mut().unwrap();
        adapters.add("zero", zero);
        adapters.set_active(&["default", "zero"]);
    }
    let (l1, l2) = (
        one.loss(ids.clone(), ids.clone()),
        two.loss(ids.clone(), ids),
    );
    let (v1, v2) = (values(l1.clone())[0], values(l2.clone())[0]);
    assert!((v1 - v2).abs() <= 1e-6 * v1.abs(), "loss {v1} vs {v2}");
    let (g1, g2) = (l1.backward(), l2.backward());
    let mut worst = 0f32;
    for ((_, a), (_, b)) in one.linears().into_iter().zip(two.linears()) {
        let (a, b) = (a.adapter("default").unwrap(), b.adapter("default").unwrap());
        let (ma, mb) = (a.magnitude.as_ref().unwrap(), b.magnitude.as_ref().unwrap());
        let m = (ma.val().grad(&g1).unwrap(), mb.val().grad(&g2).unwrap());
        let la = (
            a.lora_a.val().grad(&g1).unwrap(),
            b.lora_a.val().grad(&g2).unwrap(),
        );
        worst = worst.max(rel_err(&values(m.0), &values(m.1)));
        worst = worst.max(rel_err(&values(la.0), &values(la.1)));
    }
    assert!(
        worst < 1e-5,
        "fused vs composed gradients differ by {worst:e}"
    );
}

#[test]
fn dora_merges_in_two_calls_unmerge_last_merged_first() {
    // DoRA merges do not commute: merging "b", then "a", must unmerge "a" first.
    let device = Device::flex();
    let ids = input_ids(REFERENCE, &device);
    let mut model = with_peft_adapter(BASES[0].1, None, &device);
    let adapter = PeftAdapter::load(fixture("dora/adapter"), &device).unwrap();
    model.load_adapter(&adapter, "second").unwrap();
    let original = weights(&model);
    let both = values(model.forward(ids.clone(), None));
    model.set_active_adapters(&["second"]);
    model.merge_adapters().unwrap();
    model.set_active_adapters(&["default", "second"]);
    model.merge_adapters().unwrap();
    model.unmerge_adapters().unwrap();
    for (k, (w, o)) in weights(&model).iter().zip(&original).enumerate() {
        assert_close(
            &format!("layer {k} after two merges and unmerge"),
            w,
            o,
            1e-5,
        );
    }
    assert_close(
        "logits after two merges and unmerge",
        &values(model.forward(ids, None)),
        &both,
        1e-5,
    );
}

#[test]
fn a_dora_adapter_is_refused_as_a_gguf_lora_adapter_whatever_its_config_says() {
    let device = Device::flex();
    let mut adapter = PeftAdapter::load(fixture("dora/adapter"), &device).unwrap();
    adapter.config.use_dora = false;
    let config = qlora_llama::LlamaConfig::load(fixture(BASES[0].1).join("config.json")).unwrap();
    let path = std::env::temp_dir().join(format!("qlora-dora-{}.gguf", std::process::id()));
    let e = qlora_llama::save_gguf_lora(&adapter, &config, qlora_llama::GgmlType::F32, &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DoRA") && !path.exists(), "{e}");
    // And saved through the model, such an adapter says use_dora whatever config it is given.
    let model = with_peft_adapter(BASES[0].1, None, &device);
    let plain = LoraConfig {
        use_dora: false,
        ..dora_config()
    };
    assert!(model.adapter("default", plain).config.use_dora);
}
