//! A short fine-tune on the device with the library's `Trainer`: the bundled conversations
//! (`data/chitchat.jsonl`, tokenized here by the default model's tokenizer, since the model
//! itself is too big to carry) on a random-init model of the default model's shape, QLoRA r16
//! on the seven linears. It shows that the held-out loss falls on the device, and that a run
//! checkpointed halfway and resumed in a fresh `Trainer` takes the same steps as a straight
//! run (losses compared: bit for bit where the device's kernels are deterministic, and the
//! largest relative difference reported either way).

use std::path::Path;

use burn::tensor::Device;
use burn_qlora::llama::{LlamaConfig, LlamaTokenizer, TokenizerFiles, default_model_path};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{LoraApplier, LoraConfig};
use burn_qlora::train::{
    DataOptions, FitOptions, OptimizerKind, Sample, Schedule, TrainConfig, Trainer,
    find_checkpoint, load_dataset, pack, split,
};
use serde_json::{Value, json};

use crate::common::bench_model::{SMOLLM2, Shape, lora_seven_linears};

const SEQ_LEN: usize = 256;

/// Tokenizes `data` with the cached default model's tokenizer (as `finetune` does, at its
/// default `--seq-len` 256) and writes the samples to `out`. Run by `benches/gpu/build.sh`.
pub fn prepare(data: &Path, out: &Path) -> Result<usize, String> {
    let model = default_model_path();
    if !model.is_file() {
        return Err(format!(
            "the default model is not cached ({}): its tokenizer makes the samples; run \
             `cargo run --release --example finetune` once, or set QLORA_FETCH_MODEL=1 for the tests",
            model.display()
        ));
    }
    let tok = LlamaTokenizer::load(&model).map_err(|e| e.to_string())?;
    let opts = DataOptions {
        max_len: SEQ_LEN,
        ..DataOptions::default()
    };
    let (samples, _) = load_dataset(data, &tok, &opts).map_err(|e| e.to_string())?;
    let rows: Vec<Value> = samples
        .iter()
        .map(|s| json!({"input_ids": s.input_ids, "labels": s.labels}))
        .collect();
    let pad = tok.pad_id(SMOLLM2.vocab);
    let text = json!({"data": data.display().to_string(), "pad_id": pad, "samples": rows});
    std::fs::write(out, text.to_string()).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(samples.len())
}

fn read_samples(path: &Path) -> Result<(Vec<Sample>, u32), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (benches/gpu/build.sh writes it into the kit)",
            path.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let samples = v["samples"]
        .as_array()
        .ok_or_else(|| format!("{}: no `samples` list", path.display()))?
        .iter()
        .map(|s| {
            let ids = serde_json::from_value(s["input_ids"].clone());
            let labels = serde_json::from_value(s["labels"].clone());
            match (ids, labels) {
                (Ok(i), Ok(l)) => Ok(Sample::new(i, l)),
                _ => Err(format!(
                    "{}: a sample without input_ids/labels",
                    path.display()
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pad = v["pad_id"].as_u64().unwrap_or(0) as u32;
    Ok((samples, pad))
}

/// One run: a fresh model and adapters from the same seeds, `steps` steps, then optionally a
/// resume from `resume_from` first. Returns the trainer's per-step losses and held-out losses.
struct Run {
    losses: Vec<f64>,
    initial_eval: Option<f64>,
    final_eval: Option<f64>,
    seconds: f64,
    tokens: usize,
}

#[allow(clippy::too_many_arguments)]
fn train(
    device: &Device,
    config: &LlamaConfig,
    train: &[Sample],
    eval: &[Sample],
    pad: u32,
    steps: usize,
    out: &Path,
    resume_from: Option<&Path>,
) -> Result<Run, String> {
    device.seed(7);
    let lora = LoraConfig {
        lora_dropout: 0.05,
        ..lora_seven_linears()
    };
    let applier = LoraApplier::new(lora.clone(), Some(QuantConfig::qlora()), device)
        .map_err(|e| e.to_string())?;
    let model = config.init(&applier, 0).map_err(|e| e.to_string())?;
    let tc = TrainConfig {
        steps,
        batch_size: 4,
        lr: 1e-3,
        schedule: Schedule::Constant,
        optimizer: OptimizerKind::AdamW,
        seed: 3,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(
        model,
        lora,
        "default",
        train.to_vec(),
        eval.to_vec(),
        pad,
        tc,
    )
    .map_err(|e| e.to_string())?;
    if let Some(dir) = resume_from {
        let ckpt =
            find_checkpoint(dir).ok_or_else(|| format!("no checkpoint in {}", dir.display()))?;
        t.resume(&ckpt).map_err(|e| e.to_string())?;
    }
    let summary = t
        .fit(&FitOptions::new(out), |_| {})
        .map_err(|e| e.to_string())?;
    Ok(Run {
        losses: t.state.history.iter().map(|r| r.loss).collect(),
        initial_eval: summary.initial_eval_loss,
        final_eval: summary.final_eval_loss,
        seconds: summary.seconds,
        tokens: summary.tokens,
    })
}

/// The section's JSON, markdown and whether it failed.
pub fn run(device: &Device, samples: &Path, work: &Path, dry_run: bool) -> (Value, String, bool) {
    match run_inner(device, samples, work, dry_run) {
        Ok((json, md, ok)) => (json, md, !ok),
        Err(e) => (json!({"error": e}), format!("FAILED: {e}\n"), true),
    }
}

fn run_inner(
    device: &Device,
    samples: &Path,
    work: &Path,
    dry_run: bool,
) -> Result<(Value, String, bool), String> {
    let (all, pad) = read_samples(samples)?;
    let (train_idx, eval_idx) = split(all.len(), 0.05, 42);
    let (n_train, n_eval) = if dry_run {
        (48, 4)
    } else {
        (usize::MAX, usize::MAX)
    };
    let pick = |idx: &[usize], n: usize| -> Vec<Sample> {
        idx.iter().take(n).map(|&i| all[i].clone()).collect()
    };
    let train_set = pack(pick(&train_idx, n_train), SEQ_LEN);
    let eval_set = pick(&eval_idx, n_eval);
    let shape = if dry_run {
        Shape {
            hidden: 64,
            ffn: 172,
            heads: 4,
            kv_heads: 2,
            layers: 2,
            ..SMOLLM2
        }
    } else {
        SMOLLM2
    };
    let config = shape.config(SEQ_LEN);
    let half = if dry_run { 2 } else { 10 };
    let _ = std::fs::remove_dir_all(work);
    let (a, b, c) = (
        work.join("straight"),
        work.join("first-half"),
        work.join("resumed"),
    );
    let straight = train(
        device,
        &config,
        &train_set,
        &eval_set,
        pad,
        2 * half,
        &a,
        None,
    )?;
    train(device, &config, &train_set, &eval_set, pad, half, &b, None)?;
    std::fs::create_dir_all(&c).map_err(|e| e.to_string())?;
    let resumed = train(
        device,
        &config,
        &train_set,
        &eval_set,
        pad,
        2 * half,
        &c,
        Some(&b),
    )?;
    let after = &straight.losses[half..];
    let again = &resumed.losses[half..];
    let identical = after
        .iter()
        .zip(again)
        .all(|(x, y)| x.to_bits() == y.to_bits());
    let max_rel = after
        .iter()
        .zip(again)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-12))
        .fold(0.0, f64::max);
    let falls = matches!((straight.initial_eval, straight.final_eval), (Some(a), Some(b)) if b < a);
    let resumes = after.len() == again.len() && max_rel <= 1e-4;
    let tps = straight.tokens as f64 / straight.seconds;
    let md = format!(
        "| steps | train rows (packed to {SEQ_LEN}) | held-out samples | held-out loss before → after | \
         tokens/s | resumed at {half}: steps {}–{} |\n|---|---|---|---|---|---|\n\
         | {} | {} | {} | {:.4} → {:.4} ({}) | {tps:.0} | {} (largest relative difference {max_rel:.1e}) |\n",
        half + 1,
        2 * half,
        2 * half,
        train_set.len(),
        eval_set.len(),
        straight.initial_eval.unwrap_or(f64::NAN),
        straight.final_eval.unwrap_or(f64::NAN),
        if falls { "falls" } else { "DOES NOT FALL" },
        if identical {
            "bit-identical"
        } else if resumes {
            "within 1e-4"
        } else {
            "DIFFERENT"
        },
    );
    let json = json!({
        "steps": 2 * half, "train_rows": train_set.len(), "eval_samples": eval_set.len(),
        "initial_eval_loss": straight.initial_eval, "final_eval_loss": straight.final_eval,
        "losses_straight": straight.losses, "losses_resumed": resumed.losses,
        "resume_bit_identical": identical, "resume_max_rel_diff": max_rel,
        "tokens_per_s": tps, "loss_falls": falls,
    });
    let _ = std::fs::remove_dir_all(work);
    Ok((json, md, falls && resumes))
}
