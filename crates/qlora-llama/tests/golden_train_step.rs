//! One QLoRA training step on the golden tiny LLaMA against PyTorch + PEFT + bitsandbytes:
//! loss, the gradient of every LoRA tensor, the parameters after one AdamW step (lr 1e-3, no
//! weight decay) and the loss after it, on the NF4 base and on the fp32 base.

use std::path::PathBuf;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LlamaForCausalLM, LoraModel, causal_lm_loss};
use qlora_nf4::QuantConfig;
use qlora_nn::{LoraApplier, PeftAdapter};
use qlora_optim::Paged;
use safetensors::SafeTensors;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

fn f32s(st: &SafeTensors, key: &str) -> Vec<f32> {
    st.tensor(key)
        .unwrap_or_else(|_| panic!("missing {key}"))
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    qlora_testenv::compare::rel_err(a, b, "golden step")
}

fn run(base: &str, quantize: bool, file: &str, fused: bool) {
    let bytes = std::fs::read(golden(file)).unwrap();
    let g = SafeTensors::deserialize(&bytes).unwrap();
    let device = Device::flex().autodiff();
    let applier = LoraApplier::base_only(quantize.then(QuantConfig::qlora), &device);
    let mut model = LlamaForCausalLM::load_hf(golden(base), &applier).unwrap();
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), &device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();

    let ids_bytes = std::fs::read(golden("tiny_llama_logits.safetensors")).unwrap();
    let ids_st = SafeTensors::deserialize(&ids_bytes).unwrap();
    let ids: Vec<i64> = ids_st
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut labels = ids.clone();
    labels[..5].fill(-100);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 24]), &device);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [2, 24]), &device);

    // The loss on the logits, or with the head fused into the cross-entropy.
    let loss_of = |model: &LlamaForCausalLM| {
        if fused {
            model.loss(ids.clone(), labels.clone())
        } else {
            causal_lm_loss(model.forward(ids.clone(), None), labels.clone())
        }
    };
    let loss = loss_of(&model);
    let l = vals(loss.clone())[0];
    let want = f32s(&g, "loss")[0];
    assert!((l - want).abs() / want < 1e-5, "{file}: loss {l} vs {want}");
    let grads = loss.backward();
    let mut worst = 0f32;
    for (path, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for (suffix, p) in [("lora_A", &a.lora_a), ("lora_B", &a.lora_b)] {
            let got = vals(p.val().grad(&grads).expect("gradient"));
            let e = max_rel(&got, &f32s(&g, &format!("grad.{path}.{suffix}.weight")));
            worst = worst.max(e);
        }
    }
    assert!(worst < 1e-4, "{file}: gradient relative error {worst}");

    let grads = GradientsParams::from_grads(grads, &model);
    let adamw = AdamWConfig::new().with_weight_decay(0.0).with_epsilon(1e-8);
    // Paged<AdamW> (state paged to the host after every update) gives the same step.
    let mut paged = ModuleOptimizer::from(Paged::new(adamw.build(), Device::flex(), 0));
    // `GradientsParams` is not `Clone`: the same gradients again from a second backward pass
    // (no dropout in the golden adapter, so the passes are identical).
    let again = loss_of(&model).backward();
    let paged_model = paged.step(
        1e-3,
        model.clone(),
        GradientsParams::from_grads(again, &model),
    );
    let mut optim: ModuleOptimizer = adamw.init();
    let model = optim.step(1e-3, model, grads);
    for ((_, a), (_, b)) in model.linears().into_iter().zip(paged_model.linears()) {
        let (a, b) = (a.adapter("default").unwrap(), b.adapter("default").unwrap());
        assert!(
            vals(a.lora_a.val()) == vals(b.lora_a.val())
                && vals(a.lora_b.val()) == vals(b.lora_b.val())
        );
    }
    let mut worst = 0f32;
    for (path, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for (suffix, p) in [("lora_A", &a.lora_a), ("lora_B", &a.lora_b)] {
            let want = f32s(&g, &format!("param_after_adamw.{path}.{suffix}.weight"));
            let got = vals(p.val());
            worst = worst.max(qlora_testenv::compare::max_abs_diff(
                &got,
                &want,
                "parameter after AdamW",
            ));
        }
    }
    assert!(worst < 1e-5, "{file}: parameter after AdamW off by {worst}");
    let after = vals(causal_lm_loss(model.forward(ids, None), labels))[0];
    let want = f32s(&g, "loss_after_step")[0];
    assert!(
        (after - want).abs() / want < 1e-5,
        "{file}: loss after step {after} vs {want}"
    );
}

#[test]
fn qlora_step_on_the_nf4_base_matches_peft() {
    run(
        "tiny-llama-nf4",
        true,
        "qlora_train_step_nf4.safetensors",
        false,
    );
}

#[test]
fn lora_step_on_the_fp32_base_matches_peft() {
    run(
        "tiny-llama",
        false,
        "qlora_train_step_fp32.safetensors",
        false,
    );
}

#[test]
fn fused_head_loss_step_matches_peft() {
    run(
        "tiny-llama-nf4",
        true,
        "qlora_train_step_nf4.safetensors",
        true,
    );
    run(
        "tiny-llama",
        false,
        "qlora_train_step_fp32.safetensors",
        true,
    );
}
