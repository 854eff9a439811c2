//! The LLaMA-style families this crate computes, each against transformers 5.23 / PEFT 0.21 /
//! bnb 0.50 on its tiny golden model (`tests/fixtures/golden/families/<family>`, see the golden
//! README): fp32 logits, NF4 quantized on load and the bnb-4bit folder, the PEFT adapter
//! (`all-linear`) on both bases, greedy decoding with the KV cache, the merge, and a save that
//! transformers' reader takes back (`model_type`, `architectures`).
//!
//! `model_type`s this crate does not compute (the multimodal `gemma3`, MoE families, ...) are
//! refused by name (`unsupported_families_are_named_errors`).

use std::path::PathBuf;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use qlora_llama::{
    LlamaConfig, LlamaForCausalLM, LoraModel, ModelType, SaveFormat, causal_lm_loss,
};
use qlora_nf4::{AbsmaxRounding, QuantConfig};
use qlora_nn::{LoraApplier, PeftAdapter};
use safetensors::SafeTensors;

#[path = "support/family.rs"]
mod golden_families;
use golden_families::{Reference, family, greedy, load};
#[path = "support/logits.rs"]
mod logits;
use logits::{check, rel_err, st_f32s, values};

/// Every check of the module docs for family `name`, whose config is of `model_type`.
fn matches_transformers(name: &str, model_type: ModelType) {
    let device = Device::flex();
    let r = Reference::open(name);
    let ids = r.input_ids(&device);
    let adapter = PeftAdapter::load(family(name).join("adapter"), &device).unwrap();

    // fp32, then with the adapter, merged, and greedy decoding of both.
    let mut model = load(family(name).join("model"), None, &device);
    assert_eq!(model.config.model_type, model_type);
    check(
        &format!("{name} logits_fp32"),
        values(model.forward(ids.clone(), None)),
        &r.f32s("logits_fp32"),
        1e-4,
    );
    assert_eq!(
        greedy(&model, &r),
        r.i64s("greedy_fp32").0,
        "{name} greedy_fp32"
    );
    model.load_adapter(&adapter, "default").unwrap();
    let with_adapter = values(model.forward(ids.clone(), None));
    check(
        &format!("{name} logits_lora"),
        with_adapter.clone(),
        &r.f32s("logits_lora"),
        1e-4,
    );
    assert_eq!(
        greedy(&model, &r),
        r.i64s("greedy_lora").0,
        "{name} greedy_lora"
    );
    let merged = model.merge_and_unload();
    let merged_logits = values(merged.forward(ids.clone(), None));
    check(
        &format!("{name} merged vs adapter"),
        merged_logits.clone(),
        &with_adapter,
        1e-5,
    );

    // The merged model saved as HF float files reads back, with its family.
    let out = std::env::temp_dir().join(format!("qlora-family-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    merged.save_hf(&out, SaveFormat::F32).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], model_type.as_str());
    assert_eq!(cfg["architectures"][0], model_type.architecture());
    let back = load(out.clone(), None, &device);
    assert_eq!(back.config, merged.config);
    check(
        &format!("{name} saved merged"),
        values(back.forward(ids.clone(), None)),
        &merged_logits,
        1e-6,
    );
    std::fs::remove_dir_all(&out).unwrap();

    // NF4: quantized on load (exact nearest absmax codes, as bnb-CUDA; and bnb-CPU's table, as
    // the folder was made), the bnb-4bit folder, and the adapter on the latter.
    let quantized = load(
        family(name).join("model"),
        Some(QuantConfig::qlora()),
        &device,
    );
    let on_load = values(quantized.forward(ids.clone(), None));
    same_quantization_as_bnb(name, &quantized, false);
    // The few absmax codes that bnb-CPU's lookup table rounds one step off (see
    // `same_quantization_as_bnb`) move logits by up to ~1e-3 of their scale.
    check(
        &format!("{name} logits_nf4 (quantized on load, exact nearest)"),
        on_load,
        &r.f32s("logits_nf4"),
        2e-3,
    );
    let cpu = QuantConfig::qlora().with_absmax_rounding(AbsmaxRounding::CpuTable);
    let quantized = load(family(name).join("model"), Some(cpu), &device);
    let on_load = values(quantized.forward(ids.clone(), None));
    same_quantization_as_bnb(name, &quantized, true);
    check(
        &format!("{name} logits_nf4 (quantized on load, bnb-CPU's table)"),
        on_load.clone(),
        &r.f32s("logits_nf4"),
        1e-3,
    );
    let mut bnb = load(
        family(name).join("model-nf4"),
        Some(QuantConfig::qlora()),
        &device,
    );
    assert_eq!(bnb.config.model_type, model_type);
    let from_folder = values(bnb.forward(ids.clone(), None));
    check(
        &format!("{name} logits_nf4 (bnb-4bit folder)"),
        from_folder.clone(),
        &r.f32s("logits_nf4"),
        1e-3,
    );
    assert_eq!(
        from_folder, on_load,
        "{name}: the bnb-4bit folder vs quantized on load with bnb-CPU's table"
    );
    bnb.load_adapter(&adapter, "default").unwrap();
    check(
        &format!("{name} logits_nf4_lora"),
        values(bnb.forward(ids, None)),
        &r.f32s("logits_nf4_lora"),
        1e-3,
    );
}

/// `model` (quantized on load) saved as bnb-4bit holds what transformers + bnb wrote to the
/// family's `model-nf4/`: the same tensors, every packed 4-bit code and nested absmax equal,
/// and the 8-bit absmax codes equal; with `exact` false (quantized with exact-nearest codes, as
/// bnb's CUDA quantizer does) except where bnb-CPU's 65 536-entry lookup table rounds one step
/// off: at most 1 % of them, each one step (golden README, "LUT caveat").
fn same_quantization_as_bnb(name: &str, model: &LlamaForCausalLM, exact: bool) {
    let out = std::env::temp_dir().join(format!("qlora-family-nf4-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    model
        .save_hf(&out, SaveFormat::Bnb4(QuantConfig::qlora()))
        .unwrap();
    let ours = std::fs::read(out.join("model.safetensors")).unwrap();
    let theirs = std::fs::read(family(name).join("model-nf4/model.safetensors")).unwrap();
    let (ours, theirs) = (
        SafeTensors::deserialize(&ours).unwrap(),
        SafeTensors::deserialize(&theirs).unwrap(),
    );
    let (mut a, mut b) = (ours.names(), theirs.names());
    a.sort();
    b.sort();
    assert_eq!(a, b, "{name}: tensor names");
    let (mut codes, mut off) = (0usize, 0usize);
    for n in a {
        let (x, y) = (ours.tensor(n).unwrap(), theirs.tensor(n).unwrap());
        assert_eq!(
            (x.dtype(), x.shape()),
            (y.dtype(), y.shape()),
            "{name}: {n}"
        );
        if n.ends_with(".weight.absmax") {
            for (p, q) in x.data().iter().zip(y.data()) {
                codes += 1;
                if p != q {
                    assert!(
                        !exact,
                        "{name}: {n}: codes {p} and {q} with bnb-CPU's table"
                    );
                    off += 1;
                    assert_eq!(p.abs_diff(*q), 1, "{name}: {n}: codes {p} and {q}");
                }
            }
        } else if n.ends_with(".weight") || n.ends_with(".nested_absmax") {
            assert!(x.data() == y.data(), "{name}: {n}: bytes differ");
        }
    }
    eprintln!("{name}: {off} of {codes} absmax codes one step off bnb-CPU's");
    assert!(
        off * 100 <= codes,
        "{name}: {off} of {codes} absmax codes differ"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn llama_family_matches_transformers() {
    matches_transformers("llama", ModelType::Llama);
}

#[test]
fn qwen2_family_matches_transformers() {
    matches_transformers("qwen2", ModelType::Qwen2);
}

/// QLoRA on the family's bnb-4bit folder with its adapter: the loss and the gradient of every
/// LoRA A and B equal PEFT + bitsandbytes' for the same step
/// (`tests/fixtures/family-steps/<family>.safetensors`, made by
/// `tests/fixtures/scripts/make_family_steps.py`); the fused loss (head inside the
/// cross-entropy) equals the loss on the logits with the same gradients (both paths share the
/// block ops, so that part checks the head's fusion only: the PEFT reference checks the rest);
/// and AdamW steps lower it.
fn qlora_steps_train(name: &str) {
    let device = Device::flex().autodiff();
    let r = Reference::open(name);
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let mut model = LlamaForCausalLM::load_hf(family(name).join("model-nf4"), &applier).unwrap();
    let adapter = PeftAdapter::load(family(name).join("adapter"), &device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let ids = r.input_ids(&device);
    let labels = ids.clone();
    let fused = model.loss(ids.clone(), labels.clone());
    let plain = causal_lm_loss(model.forward(ids.clone(), None), labels.clone());
    let (lf, lp) = (values(fused.clone())[0], values(plain.clone())[0]);
    assert!(
        (lf - lp).abs() <= 1e-5 * lp.abs(),
        "{name}: fused loss {lf} vs {lp}"
    );
    let steps = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/family-steps")
            .join(format!("{name}.safetensors")),
    )
    .unwrap();
    let peft = SafeTensors::deserialize(&steps).unwrap();
    let peft_f32s = |key: &str| st_f32s(&peft, key);
    let peft_loss = peft_f32s("loss")[0];
    assert!(
        (lp - peft_loss).abs() <= 1e-5 * peft_loss.abs(),
        "{name}: loss {lp} vs PEFT's {peft_loss}"
    );
    let (gf, gp) = (fused.backward(), plain.backward());
    let (mut worst, mut worst_peft, mut compared) = (0f32, 0f32, 0);
    for (path, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for (p, which) in [(&a.lora_a, "lora_A"), (&a.lora_b, "lora_B")] {
            let (x, y) = (p.val().grad(&gf), p.val().grad(&gp));
            let (x, y) = (values(x.expect(&path)), values(y.expect(&path)));
            worst = worst.max(rel_err(&x, &y));
            let want = peft_f32s(&format!("grad.{path}.{which}.weight"));
            worst_peft = worst_peft.max(rel_err(&y, &want));
            compared += 1;
        }
    }
    assert_eq!(
        compared,
        peft.len() - 1,
        "{name}: every PEFT gradient compared"
    );
    eprintln!("{name}: gradients within {worst_peft:e} of PEFT's");
    assert!(
        worst_peft < 1e-4,
        "{name}: gradients differ from PEFT's by {worst_peft:e}"
    );
    assert!(
        worst < 1e-4,
        "{name}: fused vs plain gradients differ by {worst:e}"
    );
    let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(0.0).init();
    let first = lf;
    for _ in 0..5 {
        let loss = model.loss(ids.clone(), labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let last = values(model.loss(ids, labels))[0];
    assert!(last < first, "{name}: loss {first} -> {last} after 5 steps");
}

#[test]
fn llama_family_trains_with_qlora() {
    qlora_steps_train("llama");
}

#[test]
fn qwen2_family_trains_with_qlora() {
    qlora_steps_train("qwen2");
}

#[test]
fn mistral_family_matches_transformers() {
    matches_transformers("mistral", ModelType::Mistral);
}

#[test]
fn mistral_family_trains_with_qlora() {
    qlora_steps_train("mistral");
}

#[test]
fn mistral_reads_its_sliding_window() {
    let c = LlamaConfig::load(family("mistral").join("model/config.json")).unwrap();
    // 8 keys for 20 positions: the window changes the logits (golden README).
    assert_eq!(c.sliding_window, Some(8));
    let mut v: serde_json::Value = serde_json::from_str(&c.to_hf_json()).unwrap();
    assert_eq!(v["sliding_window"], 8);
    v["sliding_window"] = serde_json::Value::Null;
    let full = LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap();
    assert_eq!(full.sliding_window, None);
    v["sliding_window"] = 0.into();
    let e = LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap_err();
    assert!(e.to_string().contains("sliding_window"), "{e}");
}

#[test]
fn phi3_family_matches_transformers() {
    matches_transformers("phi3", ModelType::Phi3);
}

#[test]
fn phi3_family_trains_with_qlora() {
    qlora_steps_train("phi3");
}

#[test]
fn phi3_fuses_qkv_and_gate_up_and_rotates_part_of_each_head() {
    let c = LlamaConfig::load(family("phi3").join("model/config.json")).unwrap();
    assert!(c.fused_projections);
    // partial_rotary_factor 0.75 of head_dim 16.
    assert_eq!((c.head_dim, c.rotary_dim), (16, 12));
    let names: Vec<String> = c.layer_linears(0).into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(
        names,
        [
            "model.layers.0.self_attn.qkv_proj",
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.gate_up_proj",
            "model.layers.0.mlp.down_proj"
        ]
    );
    // The config written back reads as the same (the factor included).
    let back = LlamaConfig::from_json_str(&c.to_hf_json(), "config.json").unwrap();
    assert_eq!(back, c);
    // The PEFT adapter targets the fused linears by their names.
    let device = Device::flex();
    let mut model = load(family("phi3").join("model"), None, &device);
    let adapter = PeftAdapter::load(family("phi3").join("adapter"), &device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let adapted: Vec<String> = model
        .linears()
        .into_iter()
        .filter(|(_, l)| l.adapter("default").is_some())
        .map(|(p, _)| p)
        .collect();
    assert_eq!(adapted.len(), 3 * 4);
    assert!(adapted.contains(&"model.layers.2.self_attn.qkv_proj".to_string()));
}

#[test]
fn qwen3_family_matches_transformers() {
    matches_transformers("qwen3", ModelType::Qwen3);
}

#[test]
fn qwen3_family_trains_with_qlora() {
    qlora_steps_train("qwen3");
}

#[test]
fn qwen3_norms_each_head_of_q_and_k() {
    let c = LlamaConfig::load(family("qwen3").join("model/config.json")).unwrap();
    assert!(c.qk_norm && !c.qkv_has_bias() && !c.o_has_bias());
    // head_dim 32 is not hidden / heads (16).
    assert_eq!(
        (c.head_dim, c.hidden_size / c.num_attention_heads),
        (32, 16)
    );
    let device = Device::flex();
    let model = load(family("qwen3").join("model"), None, &device);
    let attn = &model.model.layers[0].self_attn;
    let widths = [&attn.q_norm, &attn.k_norm].map(|n| n.as_ref().map(|n| n.weight.dims()));
    assert_eq!(widths, [Some([32]), Some([32])]);
}

#[test]
fn qwen2_reads_biases_on_qkv_only() {
    let c = LlamaConfig::load(family("qwen2").join("model/config.json")).unwrap();
    assert!(c.qkv_has_bias() && !c.o_has_bias() && !c.mlp_bias);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope.theta, 1e6);
}

/// The tiny qwen2 family's config with the fields of `extra` set.
fn config_with(extra: serde_json::Value) -> Result<LlamaConfig, String> {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family("qwen2").join("model/config.json")).unwrap(),
    )
    .unwrap();
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    LlamaConfig::from_json_str(&v.to_string(), "config.json").map_err(|e| e.to_string())
}

#[test]
fn qwen2_layer_types_that_cannot_be_are_named_errors() {
    let e = config_with(serde_json::json!({
        "use_sliding_window": true,
        "sliding_window": 8,
        "layer_types": ["full_attention", "chunked_attention", "full_attention"]
    }))
    .unwrap_err();
    assert!(
        e.contains("layer_types[1]") && e.contains("chunked_attention"),
        "{e}"
    );
    let e = config_with(serde_json::json!({"use_sliding_window": true, "sliding_window": 0}))
        .unwrap_err();
    assert!(e.contains("sliding_window"), "{e}");
}

#[test]
fn unsupported_families_are_named_errors() {
    for name in ["qwen3_moe", "phi3small", "gpt2", "gemma3n", "llama4"] {
        let e = config_with(serde_json::json!({ "model_type": name })).unwrap_err();
        assert!(
            e.contains("model_type") && e.contains(name) && e.contains("not supported"),
            "{name}: {e}"
        );
    }
}

#[test]
fn gemma3_family_matches_transformers() {
    matches_transformers("gemma3", ModelType::Gemma3);
}

#[test]
fn gemma3_family_trains_with_qlora() {
    qlora_steps_train("gemma3");
}
