//! Every golden family on a CubeCL device (wgpu; lavapipe in CI): the bnb-4bit folder with its
//! PEFT adapter gives transformers' `logits_nf4_lora` (within 1e-4 of their scale), and one
//! QLoRA step gives PEFT + bitsandbytes' loss and LoRA gradients within 1e-4, the bounds of the
//! Flex tests (`tests/fixtures/family-steps/`). The model code is the same as
//! on Flex; the fused ops run their Cube kernels or composed bodies. Ignored (with the reason)
//! on a machine with no Vulkan driver.

use std::path::PathBuf;

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use burn_qlora::llama::{LlamaForCausalLM, LoraModel};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{LoraApplier, PeftAdapter};
use safetensors::SafeTensors;

#[path = "../crates/qlora-llama/tests/support/logits.rs"]
mod logits;
#[path = "support/wgpu.rs"]
mod wgpu_support;
use logits::{st_f32s, values as floats};
// max |a - b| / max |b|, failing on a non-finite value.
use qlora_testenv::compare::rel_err;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn family_on_wgpu(name: &str, device: &Device) {
    let dir = fixtures().join("golden/families").join(name);
    let reference = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids = reference.tensor("input_ids").unwrap();
    let shape = [ids.shape()[0], ids.shape()[1]];
    let ids: Vec<i64> = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), device);
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), device);
    let mut model = LlamaForCausalLM::load_hf(dir.join("model-nf4"), &applier).unwrap();
    let adapter = PeftAdapter::load(dir.join("adapter"), device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();

    let logits = floats(model.forward(ids.clone(), None));
    let e = rel_err(&logits, &st_f32s(&reference, "logits_nf4_lora"), name);
    eprintln!("{name}: logits_nf4_lora within {e:e}");
    assert!(e <= 1e-4, "{name}: logits_nf4_lora differ by {e:e}");

    let steps = std::fs::read(fixtures().join(format!("family-steps/{name}.safetensors"))).unwrap();
    let peft = SafeTensors::deserialize(&steps).unwrap();
    let loss = model.loss(ids.clone(), ids);
    let grads = loss.backward();
    let (got, want) = (floats(loss)[0], st_f32s(&peft, "loss")[0]);
    assert!(
        (got - want).abs() <= 1e-4 * want.abs(),
        "{name}: loss {got} vs PEFT's {want}"
    );
    let mut worst = 0f32;
    for (path, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for (p, which) in [(&a.lora_a, "lora_A"), (&a.lora_b, "lora_B")] {
            let g = floats(p.val().grad(&grads).expect("a LoRA gradient"));
            let key = format!("grad.{path}.{which}.weight");
            worst = worst.max(rel_err(&g, &st_f32s(&peft, &key), &key));
        }
    }
    eprintln!("{name}: gradients within {worst:e} of PEFT's");
    assert!(worst <= 1e-4, "{name}: gradients differ by {worst:e}");
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn every_family_runs_and_trains_on_wgpu() {
    let device = wgpu_support::device(DeviceKind::default()).autodiff();
    for name in ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"] {
        family_on_wgpu(name, &device);
    }
}
