//! QLoRA training steps on the device: random weights of a model's shape (the models
//! themselves are too big to carry), LoRA r16 α32 on the seven linears over an NF4 + double
//! quant base, AdamW, the fused head + loss: the step `benches/train_step.rs` times on the CPU
//! (shapes, adapters and tokens from `examples/common/bench_model.rs`).
//!
//! Memory is the device pool's: bytes in use once the model is on the device; the most in use
//! right after a forward or a backward pass, probed in the warm-up steps only (a probe waits for
//! the queued work, so the timed steps are not probed) — a lower bound of the step's peak, which
//! misses what a checkpointed block's recomputation holds inside the backward pass; and the bytes
//! reserved after the steps (whole pages, kept for reuse). The pool is emptied between cases.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use burn_qlora::llama::causal_lm_loss_fused;
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{GradientCheckpointing, LoraApplier};
use serde_json::{Value, json};

use crate::common::bench_model::{Shape, lora_seven_linears, random_ids};

/// One model shape at one batch.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub shape: Shape,
    pub batch: usize,
    pub seq: usize,
    pub checkpointing: GradientCheckpointing,
}

fn in_use(device: &Device) -> u64 {
    device.memory_pool_usage().map_or(0, |u| u.bytes_in_use)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Trains `case` for `warmup + steps` steps on `device` (an autodiff device).
pub fn run(device: &Device, case: &Case, warmup: usize, steps: usize) -> Value {
    device.memory_cleanup();
    device.seed(0);
    let applier = LoraApplier::new(lora_seven_linears(), Some(QuantConfig::qlora()), device)
        .expect("lora config");
    let mut model = case
        .shape
        .config(case.seq)
        .init(&applier, 0)
        .expect("model")
        .with_gradient_checkpointing(case.checkpointing);
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(0.0)
        .with_epsilon(1e-8)
        .init();
    let ids = random_ids(case.batch, case.seq, case.shape.vocab, device);
    device.sync().expect("device sync");
    let ready = device.memory_pool_usage();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    let mut probed = 0u64;
    for i in 0..warmup + steps {
        let t = Instant::now();
        let hidden = model.forward_hidden(ids.clone(), None);
        let loss = causal_lm_loss_fused(hidden, model.head_weight(), ids.clone());
        // Buffers are taken when an op is queued: what is in use after the forward pass is
        // what the backward pass keeps; after it, the gradients too.
        if i < warmup {
            probed = probed.max(in_use(device));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if i < warmup {
            probed = probed.max(in_use(device));
        }
        model = optim.step(1e-4, model, grads);
        let l: f32 = loss.into_scalar();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        losses.push(l);
    }
    let after = device.memory_pool_usage();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tokens = (case.batch * case.seq) as f64;
    json!({
        "case": case.name, "layers": case.shape.layers, "batch": case.batch, "seq": case.seq,
        "hidden": case.shape.hidden, "vocab": case.shape.vocab,
        "grad_checkpointing": format!("{:?}", case.checkpointing),
        "median_step_s": median, "tokens_per_s": tokens / median, "step_s": times,
        "losses": losses, "finite": losses.iter().all(|l| l.is_finite()),
        "model_in_use_mib": ready.map(|u| mib(u.bytes_in_use)),
        "in_use_after_pass_mib": after.map(|_| mib(probed)),
        "reserved_after_steps_mib": after.map(|u| mib(u.bytes_reserved)),
    })
}

/// The markdown row of one result.
pub fn row(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
    format!(
        "| {} | {} | {} × {} | {} | {:.3} | {:.0} | {} | {} | {} |\n",
        r["case"].as_str().unwrap_or(""),
        r["layers"],
        r["batch"],
        r["seq"],
        r["grad_checkpointing"].as_str().unwrap_or(""),
        r["median_step_s"].as_f64().unwrap_or(f64::NAN),
        r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        f("model_in_use_mib"),
        f("in_use_after_pass_mib"),
        f("reserved_after_steps_mib"),
    )
}

/// The table's header.
pub const HEADER: &str = "| case | layers | batch × seq | checkpointing | median step s | tokens/s | \
                          model MiB | most in use after a pass MiB | reserved after steps MiB |\n\
                          |---|---|---|---|---|---|---|---|---|\n";
