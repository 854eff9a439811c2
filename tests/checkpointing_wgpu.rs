//! Block gradient checkpointing on a CubeCL device (wgpu; lavapipe in CI): the tiny QLoRA
//! LLaMA's loss and LoRA gradients with `Block` and with `Offload` (each layer's input kept in
//! host memory, on Flex, until the backward pass) are those of the step without checkpointing.
//! Ignored (with the reason) on a machine with no Vulkan driver.

use std::path::PathBuf;

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use burn_qlora::llama::{LlamaForCausalLM, LoraModel};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{GradientCheckpointing, LoraApplier, PeftAdapter};

#[path = "support/wgpu.rs"]
mod wgpu_support;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(p)
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// The loss and every LoRA gradient of one step in `mode`.
fn step(device: &Device, mode: GradientCheckpointing) -> Vec<Vec<f32>> {
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), device);
    let mut model = LlamaForCausalLM::load_hf(golden("tiny-llama"), &applier).unwrap();
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let model = model.with_gradient_checkpointing(mode);
    let ids: Vec<i64> = (0..2 * 24).map(|i| ((i * 37 + 11) % 500) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 24]), device);
    let loss = model.loss(ids.clone(), ids);
    let grads = loss.backward();
    let mut out = vec![floats(loss)];
    for (_, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for p in [&a.lora_a, &a.lora_b] {
            out.push(floats(p.val().grad(&grads).expect("a LoRA gradient")));
        }
    }
    out
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn block_and_offload_checkpointing_on_wgpu_give_the_plain_step() {
    let device = wgpu_support::device(DeviceKind::default()).autodiff();
    let plain = step(&device, GradientCheckpointing::Off);
    for mode in [GradientCheckpointing::Block, GradientCheckpointing::Offload] {
        let ckpt = step(&device, mode);
        assert_eq!(plain.len(), ckpt.len());
        for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
            let what = format!("{mode:?}: tensor {i}");
            // Both fail on a non-finite value.
            let scale = qlora_testenv::compare::max_abs(a, &what);
            let err = qlora_testenv::compare::max_abs_diff(b, a, &what);
            assert!(scale > 0.0, "{what} is all zero");
            // The same kernels on the same values: equal, up to the order of a GPU reduction.
            assert!(
                err <= 1e-5 * scale,
                "{mode:?}: tensor {i} differs by {err} (scale {scale})"
            );
        }
    }
}
