//! Thirty QLoRA training steps on the golden tiny LLaMA against PyTorch + PEFT + bitsandbytes
//! (`tests/fixtures/qlora_curve_30.safetensors`, made by
//! `tests/fixtures/scripts/make_qlora_curve.py`): the bnb NF4 + double-quant checkpoint read as
//! it is, the golden PEFT adapter as the fixed start, AdamW (lr 1e-3, no weight decay), three
//! batches cycled. Every step's loss must match PEFT's within 1.2e-5 relative (10x the
//! worst step of the recorded run, 1.2e-6).

use std::path::PathBuf;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LlamaForCausalLM, LoraModel, causal_lm_loss};
use qlora_nf4::QuantConfig;
use qlora_nn::{LoraApplier, PeftAdapter};
use safetensors::SafeTensors;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
}

fn ints(st: &SafeTensors, key: &str) -> Vec<i64> {
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn thirty_qlora_steps_follow_peft_loss_curve() {
    let bytes = std::fs::read(fixture("qlora_curve_30.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> = st
        .tensor("loss")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let (ids, labels) = (ints(&st, "input_ids"), ints(&st, "labels"));
    let steps = want.len();
    let per = ids.len() / steps;

    let device = Device::flex().autodiff();
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let mut model = LlamaForCausalLM::load(fixture("golden/tiny-llama-nf4"), &applier).unwrap();
    let adapter = PeftAdapter::load(fixture("golden/tiny-llama-lora"), &device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(0.0)
        .with_epsilon(1e-8)
        .init();
    let mut worst = 0f32;
    for (step, want) in want.iter().enumerate() {
        let slice = |v: &[i64]| {
            Tensor::<2, Int>::from_data(
                TensorData::new(v[step * per..(step + 1) * per].to_vec(), [2, per / 2]),
                &device,
            )
        };
        let loss = causal_lm_loss(model.forward(slice(&ids), None), slice(&labels));
        let got: f32 = loss.clone().into_scalar();
        let rel = (got - want).abs() / want.abs();
        assert!(
            rel < 1.2e-5,
            "step {}: loss {got} vs PEFT {want} ({rel:.2e} relative)",
            step + 1
        );
        worst = worst.max(rel);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    assert!(want[steps - 1] < 0.85 * want[0], "the curve falls");
    println!("30 steps: worst relative loss difference to PEFT {worst:.2e}");
}
