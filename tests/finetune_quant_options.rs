//! `finetune --quant-type nf4|fp4|none --double-quant --blocksize` (bitsandbytes'
//! `BitsAndBytesConfig` for the base) and `--compute-dtype`: each setting reaches the model
//! (the log says how the base is held, and the loss before training differs between them, as
//! the base's weights do), and each trains.

use std::path::Path;

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

/// The held-out loss before training (step 0 of `metrics.jsonl`) and the last step's loss.
fn losses(dir: &Path) -> (f64, f64) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let eval0 = rows[0]["eval_loss"].as_f64().unwrap();
    let last = rows.iter().rev().find_map(|r| r["loss"].as_f64()).unwrap();
    (eval0, last)
}

#[test]
fn quant_type_double_quant_and_blocksize_reach_the_base() {
    let tiny = cli::TinyRun::new("quant-options");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let mut seen = Vec::new();
    for (name, extra, line) in [
        (
            "nf4-dq",
            &[][..],
            "base: nf4, blocksize 64, double quant true",
        ),
        (
            "nf4",
            &["--double-quant", "false"][..],
            "base: nf4, blocksize 64, double quant false",
        ),
        (
            "fp4-128",
            &["--quant-type", "fp4", "--blocksize", "128"][..],
            "base: fp4, blocksize 128, double quant true",
        ),
        (
            "none",
            &["--quant-type", "none"][..],
            "base: float (no quantization: plain LoRA)",
        ),
    ] {
        let out = work.join(name);
        let args = [
            &[
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--seq-len",
                "64",
                "--lr",
                "5e-3",
                "--device",
                "flex",
                "--compute-dtype",
                "f32",
                "--no-samples",
            ][..],
            extra,
        ]
        .concat();
        let text = cli::ok("finetune", &args);
        assert!(text.contains(line), "{name}: no `{line}` in:\n{text}");
        assert!(text.contains("compute: f32"), "{name}:\n{text}");
        assert!(out.join("adapter/adapter_model.safetensors").is_file());
        let (eval0, last) = losses(&out);
        assert!(
            eval0.is_finite() && last.is_finite(),
            "{name}: {eval0} {last}"
        );
        seen.push((name, eval0));
    }
    // Four different bases: four different losses before training.
    for (i, (a, la)) in seen.iter().enumerate() {
        for (b, lb) in &seen[i + 1..] {
            assert!(
                la != lb,
                "{a} and {b} gave the same held-out loss {la}: same base?"
            );
        }
    }
}
