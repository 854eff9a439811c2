//! Crash safety of `finetune`: the binary is SIGKILLed at five random moments of one run
//! (seeded: a random checkpoint step to pass, then a random delay within the next step, so a
//! kill can land during a step or during a checkpoint write). After every kill the output
//! folder holds a complete checkpoint no older than the one before; resuming each time and
//! finishing gives the loss series of an uninterrupted run, bit for bit.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use burn_qlora::nn::PeftAdapter;
use burn_qlora::train::find_checkpoint;

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

const STEPS: usize = 24;
const KILLS: usize = 5;

fn args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "24",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--lr",
        "5e-3",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--eval-every",
        "8",
        "--save-every",
        "1",
        "--device",
        "flex",
        "--no-samples",
        "--optimizer",
        "paged-adamw",
    ]
}

/// (step, loss bits) of every step in `out/metrics.jsonl`.
fn losses(out: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Step 0 holds only the held-out loss before training.
            Some((v["step"].as_u64().unwrap(), v["loss"].as_f64()?.to_bits()))
        })
        .collect()
}

/// The step of the complete checkpoint in `out`, checking that it loads.
fn checkpoint_step(out: &Path) -> Option<u64> {
    let dir = find_checkpoint(out)?;
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["state"]["step"].as_u64()
}

fn assert_complete(out: &Path) -> u64 {
    let dir = find_checkpoint(out).expect("a checkpoint survives the kill");
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("trainer_state.json is whole");
    PeftAdapter::load(&dir, &Device::flex()).expect("the checkpoint's adapter loads");
    assert!(dir.join("optimizer.bpk").is_file());
    v["state"]["step"].as_u64().unwrap()
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_reproduces_the_run() {
    let tiny = cli::TinyRun::new("kill");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());

    let reference = work.join("reference");
    let started = Instant::now();
    cli::ok("finetune", &args(m, d, reference.to_str().unwrap()));
    let per_step = started.elapsed().as_secs_f64() / STEPS as f64;
    let want = losses(&reference);
    assert_eq!(want.len(), STEPS);

    let out = work.join("killed");
    let o = out.to_str().unwrap();
    let mut rng = Rng(20261201);
    let mut targets: Vec<u64> = (0..KILLS)
        .map(|_| 1 + rng.below(STEPS as u64 - 3))
        .collect();
    targets.sort();
    let mut last = 0u64;
    let mut kills = 0;
    for target in targets {
        let mut a = args(m, d, o);
        if checkpoint_step(&out).is_some() {
            a.push("--resume");
        }
        let mut child = Command::new(cli::example("finetune"))
            .args(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let finished = loop {
            if checkpoint_step(&out).is_some_and(|s| s >= target) {
                break false;
            }
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "finetune made no progress"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        if !finished {
            let delay = (per_step * 1000.0 * rng.below(100) as f64 / 100.0) as u64;
            std::thread::sleep(Duration::from_millis(delay));
            let _ = child.kill(); // SIGKILL on Unix
            kills += 1;
        }
        let _ = child.wait();
        let step = assert_complete(&out);
        assert!(
            step >= last,
            "checkpoint went back from step {last} to {step}"
        );
        last = step;
    }
    assert_eq!(kills, KILLS, "every kill landed mid-run");
    let mut a = args(m, d, o);
    a.push("--resume");
    cli::ok("finetune", &a);
    assert_eq!(
        losses(&out),
        want,
        "resumed run differs from the uninterrupted one"
    );
}
