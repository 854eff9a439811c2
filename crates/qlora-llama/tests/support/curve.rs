//! The golden QLoRA training run's inputs (`tests/fixtures/qlora_curve_30.safetensors`, made by
//! `tests/fixtures/scripts/make_qlora_curve.py`) and its starting model, shared by the tests
//! that train from it through `#[path]`.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use qlora_llama::{LlamaForCausalLM, LoraModel};
use qlora_nf4::QuantConfig;
use qlora_nn::{LoraApplier, PeftAdapter};
use safetensors::SafeTensors;

/// A path under the workspace's `tests/fixtures`.
pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
}

/// The recorded run: `(input_ids, labels, PEFT's loss per step)`, ids flat over the steps.
pub fn curve() -> (Vec<i64>, Vec<i64>, Vec<f32>) {
    let bytes = std::fs::read(fixture("qlora_curve_30.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let raw = |key: &str| st.tensor(key).unwrap().data().to_vec();
    let ints = |key: &str| {
        raw(key)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let loss = raw("loss")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ints("input_ids"), ints("labels"), loss)
}

/// The bnb NF4 + double-quant tiny LLaMA with the golden PEFT adapter as its trainable
/// `default`, and the run's AdamW (no weight decay, ε 1e-8).
pub fn start(device: &Device) -> (LlamaForCausalLM, ModuleOptimizer) {
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), device);
    let mut model = LlamaForCausalLM::load(fixture("golden/tiny-llama-nf4"), &applier).unwrap();
    let adapter = PeftAdapter::load(fixture("golden/tiny-llama-lora"), device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let optim = AdamWConfig::new()
        .with_weight_decay(0.0)
        .with_epsilon(1e-8)
        .init();
    (model, optim)
}
