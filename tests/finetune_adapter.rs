//! `finetune --adapter`: a published PEFT adapter (saved in bf16 or f16, as most are) trains on
//! from its own weights, is saved in its own precision unless `--save-dtype` says otherwise, and
//! a run of it interrupted and resumed is the same run as one that was not.

use std::path::Path;

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

use burn::tensor::Device;
use burn_qlora::nn::{AdapterDtype, PeftAdapter};
use cli::ok;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
        .display()
        .to_string()
}

/// The safetensors dtypes of an adapter folder's tensors.
fn dtypes(dir: &Path) -> Vec<safetensors::Dtype> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().iter().map(|(_, v)| v.dtype()).collect()
}

/// `(step, loss)` of every training step, and the step-0 held-out loss, from `metrics.jsonl`.
fn metrics(out: &Path) -> (Vec<(u64, f64)>, f64) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut steps = Vec::new();
    let mut initial = f64::NAN;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        match v["loss"].as_f64() {
            Some(l) => steps.push((step, l)),
            None if step == 0 => initial = v["eval_loss"].as_f64().unwrap(),
            None => {}
        }
    }
    (steps, initial)
}

struct Setup(cli::TinyRun);

impl std::ops::Deref for Setup {
    type Target = cli::TinyRun;
    fn deref(&self) -> &cli::TinyRun {
        &self.0
    }
}

impl Setup {
    fn new(name: &str) -> Self {
        Self(cli::TinyRun::new(name))
    }

    /// The finetune command line for a run into `out` (constant learning rate, so that a run
    /// cut short and resumed follows the same schedule as one that was not).
    fn args<'a>(&'a self, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "--model",
            self.model.to_str().unwrap(),
            "--data",
            self.data.to_str().unwrap(),
            "--out",
            out,
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--lr",
            "5e-3",
            "--schedule",
            "constant",
            "--warmup",
            "0",
            "--eval-every",
            "2",
            "--save-every",
            "2",
            "--device",
            "flex",
            "--no-samples",
        ];
        a.extend_from_slice(extra);
        a
    }
}

#[test]
fn a_bf16_adapter_trains_on_from_its_weights_and_is_saved_in_bf16() {
    let s = Setup::new("adapter-bf16");
    let bf16 = fixture("tiny-llama-lora-bf16");
    let fresh_out = s.work.join("fresh");
    let on_out = s.work.join("on");
    let (fresh_o, on_o) = (fresh_out.to_str().unwrap(), on_out.to_str().unwrap());
    ok("finetune", &s.args(fresh_o, &["--steps", "2"]));
    let text = ok(
        "finetune",
        &s.args(on_o, &["--steps", "2", "--adapter", &bf16]),
    );

    // The adapter's weights are in the model from the start: a fresh adapter (B = 0) leaves
    // the base model's loss, this one does not.
    let (_, fresh_initial) = metrics(&fresh_out);
    let (steps, initial) = metrics(&on_out);
    assert!(initial.is_finite() && fresh_initial.is_finite(), "{text}");
    assert!(
        (initial - fresh_initial).abs() > 1e-3 * fresh_initial.abs(),
        "held-out loss before training {initial} equals a fresh adapter's {fresh_initial}"
    );
    assert_eq!(steps.len(), 2, "{text}");

    // Saved in the file's precision, with the file's shape, and trained (weights moved).
    let saved = on_out.join("adapter");
    let dt = dtypes(&saved);
    assert!(!dt.is_empty());
    assert!(dt.iter().all(|d| *d == safetensors::Dtype::BF16), "{dt:?}");
    let device = Device::flex();
    let before = PeftAdapter::load(&bf16, &device).unwrap();
    let after = PeftAdapter::load(&saved, &device).unwrap();
    assert_eq!(after.dtype, AdapterDtype::BF16);
    assert_eq!(after.config.r, before.config.r);
    assert_eq!(after.config.lora_alpha, before.config.lora_alpha);
    assert_eq!(
        after.modules.keys().collect::<Vec<_>>(),
        before.modules.keys().collect::<Vec<_>>()
    );
    let moved = before.modules.iter().any(|(m, w)| {
        let a = w.lora_b.clone().into_data().try_to_vec::<f32>().unwrap();
        let b = after.modules[m]
            .lora_b
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        a != b
    });
    assert!(moved, "training left every lora_B as it was");
}

#[test]
fn save_dtype_overrides_the_adapters_precision() {
    let s = Setup::new("adapter-f16");
    let f16 = fixture("tiny-llama-lora-f16");
    let out = s.work.join("run");
    let o = out.to_str().unwrap();
    ok("finetune", &s.args(o, &["--steps", "1", "--adapter", &f16]));
    assert!(
        dtypes(&out.join("adapter"))
            .iter()
            .all(|d| *d == safetensors::Dtype::F16)
    );
    let out32 = s.work.join("run32");
    let o32 = out32.to_str().unwrap();
    ok(
        "finetune",
        &s.args(
            o32,
            &["--steps", "1", "--adapter", &f16, "--save-dtype", "f32"],
        ),
    );
    assert!(
        dtypes(&out32.join("adapter"))
            .iter()
            .all(|d| *d == safetensors::Dtype::F32)
    );
    // A fresh adapter is saved in f32 unless told otherwise.
    let fresh = s.work.join("fresh");
    let of = fresh.to_str().unwrap();
    ok(
        "finetune",
        &s.args(of, &["--steps", "1", "--rank", "4", "--save-dtype", "bf16"]),
    );
    assert!(
        dtypes(&fresh.join("adapter"))
            .iter()
            .all(|d| *d == safetensors::Dtype::BF16)
    );
}

#[test]
fn a_resumed_run_on_a_bf16_adapter_is_the_uninterrupted_run() {
    let s = Setup::new("adapter-resume");
    let bf16 = fixture("tiny-llama-lora-bf16");
    let whole = s.work.join("whole");
    let cut = s.work.join("cut");
    let (w, c) = (whole.to_str().unwrap(), cut.to_str().unwrap());
    ok(
        "finetune",
        &s.args(w, &["--steps", "4", "--adapter", &bf16]),
    );
    ok(
        "finetune",
        &s.args(c, &["--steps", "2", "--adapter", &bf16]),
    );
    let text = ok(
        "finetune",
        &s.args(c, &["--steps", "4", "--adapter", &bf16, "--resume"]),
    );
    assert!(text.contains("resumed from"), "{text}");
    // Checkpoints hold the adapter in f32 and the optimizer state whole: the same steps, to
    // the bit.
    let (a, a0) = metrics(&whole);
    let (b, b0) = metrics(&cut);
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "resumed losses differ from the uninterrupted run's");
    assert_eq!(a0, b0);
    // The final adapter is in the file's precision, checkpoints in f32.
    assert!(
        dtypes(&cut.join("adapter"))
            .iter()
            .all(|d| *d == safetensors::Dtype::BF16)
    );
    assert!(
        dtypes(&cut.join("checkpoint"))
            .iter()
            .all(|d| *d == safetensors::Dtype::F32)
    );
}

/// `--exclude-modules` (PEFT's `exclude_modules`) leaves the named modules out of the targets:
/// the saved adapter has no weights for them, and its config says so, as PEFT writes it.
#[test]
fn exclude_modules_leaves_modules_out_and_is_saved() {
    let s = Setup::new("exclude");
    let out = s.work.join("run");
    let o = out.to_str().unwrap();
    ok(
        "finetune",
        &s.args(
            o,
            &[
                "--steps",
                "1",
                "--exclude-modules",
                "down_proj,layers.0.self_attn.q_proj",
            ],
        ),
    );
    let dir = out.join("adapter");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["exclude_modules"],
        serde_json::json!(["down_proj", "layers.0.self_attn.q_proj"]),
        "{config}"
    );
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    assert!(!names.iter().any(|n| n.contains("down_proj")), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("layers.0.self_attn.q_proj")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.contains("layers.1.self_attn.q_proj")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("up_proj")), "{names:?}");
    // PEFT's loader reads it back onto the model with the same exclusions.
    let adapter = PeftAdapter::load(&dir, &Device::flex()).unwrap();
    assert!(adapter.modules.keys().all(|m| !m.ends_with("down_proj")));
}

/// `--trainable-tokens` (PEFT's `trainable_token_indices`): the rows train and are saved under
/// PEFT's key with the ids in the config; a run cut short and resumed is the same run (the rows
/// come back from the checkpoint); a token the tokenizer does not have is a named error.
#[test]
fn trainable_tokens_train_are_saved_as_peft_does_and_resume() {
    let s = Setup::new("trainable-tokens");
    let (whole, cut) = (s.work.join("whole"), s.work.join("cut"));
    let (w, c) = (whole.to_str().unwrap(), cut.to_str().unwrap());
    // The tiny model's chat tokens, by name; its tokenizer gives them ids 2 and 1.
    let tokens = ["--trainable-tokens", "<|im_end|>,<|im_start|>"];
    ok(
        "finetune",
        &s.args(w, &[&["--steps", "4"][..], &tokens].concat()),
    );
    ok(
        "finetune",
        &s.args(c, &[&["--steps", "2"][..], &tokens].concat()),
    );
    let text = ok(
        "finetune",
        &s.args(c, &[&["--steps", "4", "--resume"][..], &tokens].concat()),
    );
    assert!(text.contains("resumed from"), "{text}");
    let (a, _) = metrics(&whole);
    let (b, _) = metrics(&cut);
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "resumed losses differ from the uninterrupted run's");

    let dir = whole.join("adapter");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["trainable_token_indices"], serde_json::json!([2, 1]));
    let adapter = PeftAdapter::load(&dir, &Device::flex()).unwrap();
    let rows = &adapter.tokens["model.embed_tokens"];
    assert_eq!(rows.shape()[0], 2);
    // Trained: the rows moved off the base embedding's.
    let bytes = std::fs::read(s.model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embed = st.tensor("model.embed_tokens.weight").unwrap();
    let hidden = embed.shape()[1];
    let floats: Vec<f32> = embed
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let base: Vec<f32> = [2, 1]
        .iter()
        .flat_map(|&r| floats[r * hidden..(r + 1) * hidden].to_vec())
        .collect();
    let trained = rows.clone().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert_eq!(base.len(), trained.len());
    assert!(base.iter().zip(&trained).any(|(x, y)| x != y));

    let bad = s.work.join("bad");
    let out = cli::run(
        "finetune",
        &s.args(
            bad.to_str().unwrap(),
            &["--steps", "1", "--trainable-tokens", "<|nope|>"],
        ),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--trainable-tokens") && err.contains("<|nope|>"),
        "{err}"
    );
}

/// Padding-free batches (the default) train the same run as padded ones: every step's loss
/// and the held-out losses agree to f32 rounding (the samples' lengths differ, so every
/// micro-batch is ragged), and the header says which batching ran.
#[test]
fn padding_free_batches_give_the_losses_of_padded_ones() {
    let s = Setup::new("padding-free");
    let (free, padded) = (s.work.join("free"), s.work.join("padded"));
    let (f, p) = (free.to_str().unwrap(), padded.to_str().unwrap());
    let text = ok("finetune", &s.args(f, &["--steps", "4"]));
    assert!(text.contains("batches: padding-free"), "{text}");
    let text = ok(
        "finetune",
        &s.args(p, &["--steps", "4", "--padding-free", "false"]),
    );
    assert!(text.contains("batches: padded"), "{text}");
    let ((a, a0), (b, b0)) = (metrics(&free), metrics(&padded));
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * y.abs();
    assert!(close(a0, b0), "held-out loss {a0} vs padded {b0}");
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            la.is_finite() && close(*la, *lb),
            "step {sa}: {la} vs padded {lb}"
        );
    }
}
