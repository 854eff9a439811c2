//! PiSSA → LoRA conversion (issue #26) against PEFT 0.21.2's
//! `save_pretrained(..., path_initial_model_for_weight_conversion=...)`
//! (`tests/fixtures/pissa_to_lora/`, made by `tests/fixtures/scripts/make_pissa_to_lora.py` on
//! the golden tiny LLaMA): PEFT's trained PiSSA folder and its initial folder convert to PEFT's
//! converted folder bit for bit; the converted adapter on the original base gives the trained
//! PiSSA model's logits; what cannot be converted is refused by name.

use burn::tensor::Device;
use qlora_llama::LlamaForCausalLM;
use qlora_nn::{InitLoraWeights, LoraApplier, LoraModel, PeftAdapter};

#[path = "support/init_refs.rs"]
mod init_refs;
#[path = "support/logits.rs"]
mod logits;
use init_refs::{f32_tensors, fixture, input_ids, model_dir};
use logits::{check, values};

const LOGITS: &str = "pissa_to_lora/logits.safetensors";

fn adapter(which: &str, device: &Device) -> PeftAdapter {
    PeftAdapter::load(fixture(&format!("pissa_to_lora/{which}")), device).unwrap()
}

fn reference_logits(key: &str) -> Vec<f32> {
    f32_tensors(LOGITS)[key].1.clone()
}

/// The original (fp32) tiny LLaMA with `adapter` loaded as `default`: its logits.
fn logits_with(adapter: &PeftAdapter, device: &Device) -> Vec<f32> {
    let applier = LoraApplier::base_only(None, device);
    let mut model = LlamaForCausalLM::load(model_dir(), &applier).unwrap();
    model.load_adapter(adapter, "default").unwrap();
    values(model.forward(input_ids(LOGITS, device), None))
}

#[test]
fn peft_s_pissa_folder_converts_to_peft_s_lora_folder_bit_for_bit() {
    let device = Device::flex();
    let (trained, initial) = (adapter("pissa", &device), adapter("initial", &device));
    assert!(matches!(
        trained.config.init_lora_weights,
        InitLoraWeights::Pissa { niter: None }
    ));
    let ours = trained.converted_to_lora(&initial).unwrap();
    let peft = adapter("lora", &device);
    assert_eq!(ours.config.r, peft.config.r);
    assert_eq!(ours.config.r, 8, "the rank doubles");
    assert_eq!(ours.config.lora_alpha, peft.config.lora_alpha);
    assert_eq!(ours.config.init_lora_weights, InitLoraWeights::Default);
    assert_eq!(
        ours.modules.keys().collect::<Vec<_>>(),
        peft.modules.keys().collect::<Vec<_>>()
    );
    assert_eq!(ours.modules.len(), 21);
    for (path, w) in &ours.modules {
        let p = &peft.modules[path];
        for (name, a, b) in [
            ("lora_A", &w.lora_a, &p.lora_a),
            ("lora_B", &w.lora_b, &p.lora_b),
        ] {
            assert_eq!(a.dims(), b.dims(), "{path}.{name}");
            let (a, b) = (values(a.clone()), values(b.clone()));
            assert!(a.iter().any(|v| *v != 0.0), "{path}.{name} is all zeros");
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{path}.{name} differs from PEFT's"
            );
        }
    }

    // Written and read back, the folder says what PEFT's says.
    let dir = std::env::temp_dir().join(format!("qlora-pissa-to-lora-{}", std::process::id()));
    ours.save(&dir).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let theirs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("pissa_to_lora/lora/adapter_config.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "r",
        "lora_alpha",
        "init_lora_weights",
        "use_rslora",
        "use_dora",
    ] {
        assert_eq!(json[key], theirs[key], "adapter_config.json `{key}`");
    }
}

#[test]
fn converted_adapter_on_the_original_base_gives_the_trained_pissa_model_s_logits() {
    let device = Device::flex();
    let (trained, initial) = (adapter("pissa", &device), adapter("initial", &device));
    // The trained PiSSA adapter: its loader runs PiSSA again on the original base and puts the
    // file's A and B on the residual, as PEFT's does.
    let pissa = logits_with(&trained, &device);
    check(
        "PiSSA adapter on the residual vs PEFT's",
        pissa.clone(),
        &reference_logits("logits_pissa"),
        1e-4,
    );
    // Converted, on the untouched base: the same model.
    let lora = logits_with(&trained.converted_to_lora(&initial).unwrap(), &device);
    check(
        "converted LoRA on the original base vs PEFT's",
        lora.clone(),
        &reference_logits("logits_lora"),
        1e-4,
    );
    check("converted LoRA vs the PiSSA model", lora, &pissa, 1e-4);
}

#[test]
fn conversions_that_cannot_hold_are_refused_by_name() {
    let device = Device::flex();
    let (trained, initial) = (adapter("pissa", &device), adapter("initial", &device));
    let err = |r: Result<PeftAdapter, qlora_nn::LoraError>| match r {
        Ok(_) => panic!("converted"),
        Err(e) => e.to_string(),
    };

    let mut loftq = trained.clone();
    loftq.config.init_lora_weights = InitLoraWeights::Loftq { iters: 1 };
    let e = err(loftq.converted_to_lora(&initial));
    assert!(
        e.contains("init_lora_weights") && e.contains("LoftQ"),
        "{e}"
    );

    let mut plain = trained.clone();
    plain.config.init_lora_weights = InitLoraWeights::Default;
    let e = err(plain.converted_to_lora(&initial));
    assert!(
        e.contains("init_lora_weights") && e.contains("only a PiSSA"),
        "{e}"
    );

    let mut alpha = initial.clone();
    alpha.config.lora_alpha *= 2.0;
    let e = err(trained.converted_to_lora(&alpha));
    assert!(
        e.contains("lora_alpha") && e.contains("not this adapter's start"),
        "{e}"
    );

    let mut rs = trained.clone();
    rs.config.use_rslora = true;
    rs.config.rank_pattern = vec![("q_proj".into(), 8)];
    let e = err(rs.converted_to_lora(&initial));
    assert!(
        e.contains("use_rslora") && e.contains("rank_pattern"),
        "{e}"
    );

    let mut missing = initial.clone();
    let gone = missing.modules.keys().next().unwrap().clone();
    missing.modules.remove(&gone);
    let e = err(trained.converted_to_lora(&missing));
    assert!(e.contains(&gone) && e.contains("no weights"), "{e}");

    let mut other = initial.clone();
    let w = other.modules.get_mut(&gone).unwrap();
    w.lora_a = w.lora_a.clone().narrow(0, 0, 2);
    let e = err(trained.converted_to_lora(&other));
    assert!(
        e.contains(&gone) && e.contains("not the same adapter"),
        "{e}"
    );
}

#[test]
fn rslora_keeps_its_scaling_when_the_rank_doubles() {
    let device = Device::flex();
    let (mut trained, mut initial) = (adapter("pissa", &device), adapter("initial", &device));
    trained.config.use_rslora = true;
    initial.config.use_rslora = true;
    let converted = trained.converted_to_lora(&initial).unwrap();
    let scaling = |c: &qlora_nn::LoraConfig| c.lora_alpha / (c.r as f64).sqrt();
    assert!((scaling(&converted.config) - scaling(&trained.config)).abs() < 1e-12);
}
