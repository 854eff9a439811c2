//! Data-parallel training on two devices equals one device with the same global batch: the
//! golden tiny LLaMA with QLoRA adapters, 10 optimizer steps of 4 samples x 2 micro-batches,
//! once on one wgpu device and once split across two wgpu device instances (Burn creates one per
//! `DeviceKind`; here both run on lavapipe). Only the trained parameters travel, and the bytes
//! counted per step are exactly theirs. Ignored (with the reason) on a machine with no Vulkan
//! driver.

use std::path::PathBuf;

use burn::tensor::{Device, DeviceKind};
use burn_qlora::llama::LlamaForCausalLM;
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{
    GradientCheckpointing, InitLoraWeights, LoraApplier, LoraConfig, LoraModel, ModuleSelector,
};
use burn_qlora::train::{OptimizerKind, Sample, Schedule, TrainConfig, Trainer, splitmix};

#[path = "support/wgpu.rs"]
mod wgpu_support;
use wgpu_support::device as wgpu;

const STEPS: usize = 10;

/// Burn's device random generator (adapter init) is shared by the tests of this process: the
/// tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sequences of varied lengths (so the two halves of a batch pad differently), prompt masked.
fn samples(n: usize, seed: u64) -> Vec<Sample> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let len = 8 + (splitmix(&mut s) % 12) as usize;
            let start = (splitmix(&mut s) % 20) as u32;
            let ids: Vec<u32> = (0..len as u32).map(|i| 10 + (start + i) % 20).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < len / 2 { -100 } else { t as i64 })
                .collect();
            Sample::new(ids, labels)
        })
        .collect()
}

fn trainer(device: &Device) -> Trainer<LlamaForCausalLM> {
    trainer_with(device, GradientCheckpointing::Off)
}

fn trainer_with(
    device: &Device,
    checkpointing: GradientCheckpointing,
) -> Trainer<LlamaForCausalLM> {
    let ad = device.clone().autodiff();
    ad.seed(7);
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        // Dropout masks are drawn per device: without dropout both runs see the same function.
        lora_dropout: 0.0,
        target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
        init_lora_weights: InitLoraWeights::Default,
        ..LoraConfig::default()
    };
    let applier = LoraApplier::new(lora.clone(), Some(QuantConfig::qlora()), &ad).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/tiny-llama");
    let model = LlamaForCausalLM::load(dir, &applier)
        .unwrap()
        .with_gradient_checkpointing(checkpointing);
    let config = TrainConfig {
        steps: STEPS,
        batch_size: 4,
        grad_accum: 2,
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup: 2,
        max_grad_norm: Some(0.3),
        optimizer: OptimizerKind::AdamW,
        seed: 3,
        ..TrainConfig::default()
    };
    Trainer::new(
        model,
        lora,
        "default",
        samples(24, 1),
        Vec::new(),
        0,
        config,
    )
    .unwrap()
}

/// Every adapter tensor of the trained model, in module order.
fn adapter_values(t: &Trainer<LlamaForCausalLM>) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (path, layer) in t.model.linears() {
        let a = layer.adapter("default").expect("adapter");
        for (name, v) in [("lora_A", a.lora_a.val()), ("lora_B", a.lora_b.val())] {
            let v = v.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            out.push((format!("{path}.{name}"), v));
        }
    }
    out
}

/// Bytes of the trained parameters (f32).
fn trained_bytes(t: &Trainer<LlamaForCausalLM>) -> u64 {
    adapter_values(t)
        .iter()
        .map(|(_, v)| 4 * v.len() as u64)
        .sum()
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn two_devices_equal_one_device_with_the_same_global_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (wgpu(DeviceKind::Cpu), wgpu(DeviceKind::DefaultDevice));
    assert_ne!(a, b, "Burn gives each DeviceKind its own device");

    let mut single = trainer(&a);
    let one: Vec<f64> = (0..STEPS)
        .map(|_| single.step().expect("step").loss)
        .collect();
    assert_eq!(single.last_transfer().gradient_bytes, 0);

    let mut dp = trainer(&a);
    dp.set_devices(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(dp.device_count(), 2);
    let bytes = trained_bytes(&dp);
    let mut two = Vec::new();
    for _ in 0..STEPS {
        let r = dp.step().expect("step");
        two.push(r.loss);
        // One replica: its gradients come over once per micro-batch, the weights go once.
        let t = dp.last_transfer();
        assert_eq!(
            t.gradient_bytes,
            2 * bytes,
            "gradients of the trained parameters only"
        );
        assert_eq!(
            t.weight_bytes, bytes,
            "weights of the trained parameters only"
        );
        assert_eq!(r.transfer_bytes, 3 * bytes);
    }

    for (s, (x, y)) in one.iter().zip(&two).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "step {}: loss {x} on one device, {y} on two",
            s + 1
        );
    }
    let (wa, wb) = (adapter_values(&single), adapter_values(&dp));
    let mut worst = 0f32;
    let mut moved = 0f32;
    for ((name, x), (_, y)) in wa.iter().zip(&wb) {
        worst = worst.max(qlora_testenv::compare::max_abs_diff(y, x, name));
        moved = moved.max(qlora_testenv::compare::max_abs(x, name));
        // Padding-free rows hold 4 samples on one device and 2 on each of two: GEMMs of other
        // lengths round differently, and AdamW's normalised step (lr 5e-3) carries the
        // rounding of near-zero gradients to ~1e-5 in 10 steps.
        assert!(worst <= 5e-5, "{name}: adapters differ by {worst}");
    }
    assert!(moved > 1e-3, "the adapters trained (largest value {moved})");
    eprintln!(
        "10 steps on 2 devices vs 1: adapters within {worst:e}; {} bytes per step",
        3 * bytes
    );
}

/// A data-parallel run checkpointed after 5 steps and resumed (on new replicas) continues as
/// the uninterrupted run: the same losses and adapters, bit for bit.
#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn a_resumed_data_parallel_run_continues_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (wgpu(DeviceKind::Cpu), wgpu(DeviceKind::DefaultDevice));
    let devices = [a.clone(), b];
    let mut straight = trainer(&a);
    straight.set_devices(&devices).unwrap();
    let all: Vec<u64> = (0..STEPS)
        .map(|_| straight.step().expect("step").loss.to_bits())
        .collect();

    let dir = std::env::temp_dir().join(format!("qlora-dp-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut first = trainer(&a);
    first.set_devices(&devices).unwrap();
    let mut losses: Vec<u64> = (0..5)
        .map(|_| first.step().expect("step").loss.to_bits())
        .collect();
    let ckpt = first.save_checkpoint(&dir).unwrap();
    drop(first);

    let mut resumed = trainer(&a);
    resumed.set_devices(&devices).unwrap();
    resumed.resume(&ckpt).unwrap();
    assert_eq!(resumed.state.step, 5);
    while !resumed.is_done() {
        losses.push(resumed.step().expect("step").loss.to_bits());
    }
    assert_eq!(losses, all, "loss bits of the resumed run");
    assert_eq!(adapter_values(&resumed), adapter_values(&straight));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Data parallel with block checkpointing (each replica recomputes its layers; `Offload` keeps
/// their inputs in host memory), checkpointed after 5 steps and resumed, trains as the plain
/// data-parallel run: the same losses and adapters, up to the rounding of kernels that Fusion
/// groups differently when the stream of ops differs.
#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn a_checkpointed_data_parallel_run_and_its_resume_train_as_the_plain_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (wgpu(DeviceKind::Cpu), wgpu(DeviceKind::DefaultDevice));
    let devices = [a.clone(), b];
    let mut plain = trainer(&a);
    plain.set_devices(&devices).unwrap();
    let all: Vec<f64> = (0..STEPS)
        .map(|_| plain.step().expect("step").loss)
        .collect();

    let dir = std::env::temp_dir().join(format!("qlora-dp-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut first = trainer_with(&a, GradientCheckpointing::Offload);
    first.set_devices(&devices).unwrap();
    let mut losses: Vec<f64> = (0..5).map(|_| first.step().expect("step").loss).collect();
    let ckpt = first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut resumed = trainer_with(&a, GradientCheckpointing::Block);
    resumed.set_devices(&devices).unwrap();
    resumed.resume(&ckpt).unwrap();
    while !resumed.is_done() {
        losses.push(resumed.step().expect("step").loss);
    }
    for (s, (x, y)) in all.iter().zip(&losses).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "step {}: loss {x} plain, {y} checkpointed",
            s + 1
        );
    }
    for ((name, x), (_, y)) in adapter_values(&plain).iter().zip(&adapter_values(&resumed)) {
        let d = qlora_testenv::compare::max_abs_diff(y, x, name);
        assert!(d <= 5e-5, "{name}: adapters differ by {d}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn device_lists_that_cannot_work_are_named_errors() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (wgpu(DeviceKind::Cpu), wgpu(DeviceKind::DefaultDevice));
    let mut t = trainer(&a);
    let err = |r: Result<(), burn_qlora::train::TrainError>| r.unwrap_err().to_string();
    assert!(err(t.set_devices(&[])).contains("no device"));
    assert!(err(t.set_devices(&[a.clone(), a.clone()])).contains("twice"));
    assert!(err(t.set_devices(&[b.clone(), a.clone()])).contains("must be the model's device"));
    let five = [a.clone(), b.clone(), Device::flex(), a.clone(), b.clone()];
    assert!(err(t.set_devices(&five)).contains("samples per micro-batch"));
    assert_eq!(t.device_count(), 1);
}
