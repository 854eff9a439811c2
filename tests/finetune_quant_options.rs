//! `finetune --quant-type nf4|fp4|none --double-quant --blocksize` (bitsandbytes'
//! `BitsAndBytesConfig` for the base) and `--compute-dtype`: each setting reaches the model
//! (the log says how the base is held, and the loss before training differs between them, as
//! the base's weights do), and each trains; `--init-lora-weights` and `--save-as-lora` (a PiSSA
//! run also written as plain LoRA on the original base, scoring the same).

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

/// The std of the `lora_A` tensors of an adapter folder.
fn lora_a_std(adapter: &Path) -> f64 {
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v = Vec::new();
    for (name, t) in st.tensors() {
        if name.contains("lora_A") {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            v.extend(
                t.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64),
            );
        }
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn init_lora_weights_gaussian_starts_a_at_one_over_r_and_pissa_and_loftq_are_saved_by_name() {
    let tiny = cli::TinyRun::new("init-lora");
    let work = tiny.work.clone();
    // One step of the tiny run into `out`, with `extra` options.
    let finetune = |out: &std::path::Path, extra: &[&str]| {
        cli::ok("finetune", &tiny.finetune_args(out, "1", extra));
    };
    let mut stds = Vec::new();
    for init in ["default", "gaussian", "pissa", "loftq"] {
        let out = work.join(init);
        finetune(
            &out,
            &["--lr", "1e-6", "--rank", "4", "--init-lora-weights", init],
        );
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
        )
        .unwrap();
        let want = match init {
            "default" => serde_json::json!(true),
            other => serde_json::json!(other),
        };
        assert_eq!(config["init_lora_weights"], want, "{init}");
        if init == "loftq" {
            // PEFT's loftq_config, with --loftq-iter's default.
            let want = serde_json::json!({"loftq_bits": 4, "loftq_iter": 1});
            assert_eq!(config["loftq_config"], want);
        }
        if init != "default" && init != "gaussian" {
            // Training on from the folder: the model is loaded in float, the initialisation
            // runs again under the file's A and B, and the base is quantized after.
            let more = work.join(format!("{init}-more"));
            let adapter = out.join("adapter");
            finetune(&more, &["--adapter", adapter.to_str().unwrap()]);
            assert!(
                more.join("adapter/adapter_model.safetensors").is_file(),
                "{init}"
            );
        }
        stds.push(lora_a_std(&out.join("adapter")));
    }
    // PEFT's gaussian init draws A with std 1/r = 0.25 (one step at lr 1e-6 moves it by
    // ~1e-6); Kaiming-uniform's is 1/sqrt(3 in), far smaller on the tiny model's widths.
    assert!((stds[1] - 0.25).abs() < 0.02, "gaussian std {}", stds[1]);
    assert!(stds[0] < 0.2, "default std {}", stds[0]);
    // PiSSA's A holds the weight's top singular vectors scaled by √(σ/s): neither draw.
    assert!(
        stds[2].is_finite() && stds[2] > 0.0,
        "pissa std {}",
        stds[2]
    );
}

/// The mean loss `score` prints for the tiny model (float base), with `adapter` if given.
fn scored_loss(model: &Path, data: &Path, adapter: Option<&Path>) -> f64 {
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--quantize",
        "none",
        "--device",
        "flex",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    cli::scores(&cli::ok("score", &args)).0
}

#[test]
fn save_as_lora_writes_a_pissa_run_as_plain_lora_on_the_original_base() {
    let tiny = cli::TinyRun::new("save-as-lora");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let out = work.join("pissa");
    let args = |init| {
        let options = [
            "--lr",
            "1e-2",
            "--rank",
            "4",
            "--quant-type",
            "none",
            "--init-lora-weights",
            init,
            "--save-as-lora",
        ];
        tiny.finetune_args(&out, "3", &options)
    };
    let log = cli::ok("finetune", &args("pissa"));
    assert!(
        log.contains("adapter as plain LoRA on the original weights (rank 8)"),
        "{log}"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter-lora/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 8);
    assert_eq!(config["init_lora_weights"], serde_json::json!(true));
    // The PiSSA adapter (its loader runs PiSSA again and puts it on the residual) and the
    // converted one on the untouched base score the same; the base alone does not.
    let pissa = scored_loss(&model, &data, Some(&out.join("adapter")));
    let lora = scored_loss(&model, &data, Some(&out.join("adapter-lora")));
    let base = scored_loss(&model, &data, None);
    assert!(
        pissa.is_finite() && (pissa - lora).abs() <= 1e-5 * pissa.abs(),
        "PiSSA {pissa} vs converted {lora}"
    );
    assert!(
        (pissa - base).abs() > 1e-3,
        "training moved nothing: {pissa} vs {base}"
    );

    // Only a PiSSA run converts, said before any work.
    let err = cli::run("finetune", &args("default"));
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && stderr.contains("--save-as-lora converts a PiSSA adapter"),
        "{stderr}"
    );
}
