//! Exact resume: a training run of the golden tiny LLaMA killed with SIGKILL mid-way and resumed
//! from its last checkpoint gives the same loss series, bit for bit, as an uninterrupted run; a
//! checkpoint of another run is refused and left intact.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::Device;
use qlora_llama::LlamaForCausalLM;
use qlora_nf4::QuantConfig;
use qlora_nn::{InitLoraWeights, LoraApplier, LoraConfig, LoraModel, ModuleSelector};
use qlora_train::{
    OptimizerKind, Sample, Schedule, StepRecord, TrainConfig, Trainer, find_checkpoint,
};

const STEPS: usize = 12;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

/// Token sequences with a learnable pattern, prompt half masked.
fn samples(n: usize, seed: u64) -> Vec<Sample> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let len = 10 + (qlora_train::splitmix(&mut s) % 10) as usize;
            // A bigram the adapters can learn quickly: each token is the previous one plus one,
            // modulo 20 (offset 10).
            let start = (qlora_train::splitmix(&mut s) % 20) as u32;
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

/// Burn's device random generator is shared by the tests of this process: runs take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn trainer(optimizer: OptimizerKind, seed: u64) -> Trainer<LlamaForCausalLM> {
    trainer_with(None, optimizer, seed)
}

fn trainer_with(
    modules_to_save: Option<Vec<String>>,
    optimizer: OptimizerKind,
    seed: u64,
) -> Trainer<LlamaForCausalLM> {
    let device = Device::flex().autodiff();
    device.seed(7);
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.1,
        target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
        init_lora_weights: InitLoraWeights::Default,
        modules_to_save,
        ..LoraConfig::default()
    };
    let applier = LoraApplier::new(lora.clone(), Some(QuantConfig::qlora()), &device).unwrap();
    let model = LlamaForCausalLM::load(golden("tiny-llama"), &applier).unwrap();
    let config = TrainConfig {
        steps: STEPS,
        batch_size: 3,
        grad_accum: 2,
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup: 2,
        optimizer,
        seed,
        ..TrainConfig::default()
    };
    Trainer::new(
        model,
        lora,
        "default",
        samples(20, 1),
        samples(6, 2),
        0,
        config,
    )
    .unwrap()
}

/// Step numbers and loss bits.
fn losses(h: &[StepRecord]) -> Vec<(usize, u64)> {
    h.iter().map(|r| (r.step, r.loss.to_bits())).collect()
}

/// The child process: trains with a checkpoint after every step until killed.
#[test]
#[ignore = "run by `sigkill_and_resume_gives_the_same_losses` in a child process"]
fn child_training_run() {
    let Some(out) = std::env::var_os("QLORA_RESUME_CHILD_OUT") else {
        return;
    };
    let mut t = trainer(OptimizerKind::PagedAdamW { budget: 0 }, 11);
    while !t.is_done() {
        t.step().expect("step");
        t.save_checkpoint(Path::new(&out)).unwrap();
        // Slow down after the third step so the parent can kill mid-run.
        if t.state.step >= 3 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn sigkill_and_resume_gives_the_same_losses() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("qlora-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // Uninterrupted reference.
    let mut full = trainer(OptimizerKind::PagedAdamW { budget: 0 }, 11);
    while !full.is_done() {
        full.step().expect("step");
    }
    // A child trains and is killed once its checkpoint passes step 4.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_training_run", "--nocapture"])
        .env("QLORA_RESUME_CHILD_OUT", &out)
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let step = find_checkpoint(&out).and_then(|d| {
            let text = std::fs::read_to_string(d.join("trainer_state.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["state"]["step"].as_u64()
        });
        if step.is_some_and(|s| s >= 4) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let dir = find_checkpoint(&out).expect("a complete checkpoint survives SIGKILL");
    let mut resumed = trainer(OptimizerKind::PagedAdamW { budget: 0 }, 11);
    resumed.resume(&dir).unwrap();
    let at = resumed.state.step;
    assert!((4..STEPS).contains(&at), "resumed at step {at}");
    while !resumed.is_done() {
        resumed.step().expect("step");
    }
    assert_eq!(losses(&resumed.state.history), losses(&full.state.history));
    // Gradient norms agree to the last bits: across two processes the CPU matmul may sum in
    // another order where buffers are aligned differently, which the loss does not see.
    for (a, b) in resumed.state.history.iter().zip(&full.state.history) {
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-12 * b.grad_norm,
            "step {}",
            a.step
        );
    }

    // A checkpoint from another run (other seed) is refused and stays intact.
    let before = std::fs::read(dir.join("trainer_state.json")).unwrap();
    let mut other = trainer(OptimizerKind::PagedAdamW { budget: 0 }, 12);
    let e = other.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("cannot resume") && e.contains("seed"), "{e}");
    let mut other = trainer(OptimizerKind::AdamW8bit, 11);
    let e = other.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("optimizer"), "{e}");
    assert_eq!(
        std::fs::read(dir.join("trainer_state.json")).unwrap(),
        before
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn training_lowers_the_loss_with_every_optimizer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for opt in [
        OptimizerKind::AdamW,
        OptimizerKind::PagedAdamW { budget: 0 },
        OptimizerKind::AdamW8bit,
    ] {
        let mut t = trainer(opt, 3);
        let before = t.eval_loss().expect("eval").unwrap();
        while !t.is_done() {
            t.step().expect("step");
        }
        let after = t.eval_loss().expect("eval").unwrap();
        assert!(after < before * 0.95, "{opt:?}: {before} -> {after}");
    }
}

#[test]
fn modules_to_save_train_checkpoint_and_resume_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let save = || Some(vec!["lm_head".to_string()]);
    let head = |t: &Trainer<LlamaForCausalLM>| {
        t.model
            .lm_head
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let mut full = trainer_with(save(), OptimizerKind::AdamW, 5);
    let head0 = head(&full);
    for _ in 0..6 {
        full.step().expect("step");
    }
    assert!(head(&full) != head0, "the head was not trained");

    let out = std::env::temp_dir().join(format!("qlora-mts-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut first = trainer_with(save(), OptimizerKind::AdamW, 5);
    for _ in 0..3 {
        first.step().expect("step");
    }
    let dir = first.save_checkpoint(&out).unwrap();
    let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&st)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(
        names.contains(&"base_model.model.lm_head.weight".to_string()),
        "{names:?}"
    );
    let mut resumed = trainer_with(save(), OptimizerKind::AdamW, 5);
    resumed.resume(&dir).unwrap();
    for _ in 0..3 {
        resumed.step().expect("step");
    }
    assert_eq!(losses(&resumed.state.history), losses(&full.state.history));
    assert_eq!(head(&resumed), head(&full));

    // The adapter with its trained head, loaded onto a fresh base, gives the trained model.
    let device = Device::flex();
    let adapter = full.model.adapter("default", full.lora.clone());
    let nf4 = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let mut fresh = LlamaForCausalLM::load(golden("tiny-llama"), &nf4).unwrap();
    let dir2 = out.join("exported");
    adapter.save(&dir2).unwrap();
    fresh
        .load_adapter(
            &qlora_nn::PeftAdapter::load(&dir2, &device).unwrap(),
            "default",
        )
        .unwrap();
    let ids =
        burn::tensor::Tensor::<2, burn::tensor::Int>::from_data([[5, 9, 200, 3, 17]], &device);
    let want = full.model.valid().forward(ids.clone(), None);
    let got = fresh.forward(ids, None);
    let (a, b) = (
        got.into_data().try_to_vec::<f32>().unwrap(),
        want.into_data().try_to_vec::<f32>().unwrap(),
    );
    let scale = qlora_testenv::compare::max_abs(&b, "adapter on a fresh base");
    let err = qlora_testenv::compare::max_abs_diff(&a, &b, "adapter on a fresh base");
    assert!(
        err < 1e-5 * scale,
        "adapter on a fresh base: error {err} (scale {scale})"
    );
    let _ = std::fs::remove_dir_all(&out);
}
