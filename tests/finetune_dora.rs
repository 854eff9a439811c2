//! `finetune --use-dora` (issue #26): a QDoRA run on the tiny model (4-bit base, LoRA dropout
//! on, so DoRA's dropout path runs) saves PEFT's DoRA folder (`use_dora`, a
//! `lora_magnitude_vector` beside every A and B), trains on from it with `--adapter`, merges into
//! an HF folder, and is refused by name as a llama.cpp GGUF adapter (which holds LoRA pairs only);
//! a run cut and resumed is the uninterrupted run, magnitudes and all.

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

#[test]
fn finetune_use_dora_saves_peft_s_dora_folder_trains_on_and_merges() {
    let tiny = cli::TinyRun::new("dora");
    let (model, work) = (tiny.model.to_str().unwrap(), tiny.work.clone());
    let run = |out: &std::path::Path, steps: &str, extra: &[&str]| {
        cli::ok("finetune", &tiny.finetune_args(out, steps, extra))
    };
    let first = work.join("first");
    let dora = ["--use-dora", "--rank", "4", "--dropout", "0.1"];
    run(&first, "2", &dora);
    let adapter = first.join("adapter");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["use_dora"], serde_json::json!(true));
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    let pairs = names
        .iter()
        .filter(|n| n.ends_with(".lora_A.weight"))
        .count();
    let magnitudes: Vec<_> = names
        .iter()
        .filter(|n| n.ends_with(".lora_magnitude_vector"))
        .collect();
    assert!(pairs > 0 && magnitudes.len() == pairs, "{names:?}");
    for n in magnitudes {
        let t = st.tensor(n).unwrap();
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{n}");
    }

    let more = work.join("more");
    run(&more, "2", &["--adapter", adapter.to_str().unwrap()]);
    assert!(more.join("adapter/adapter_model.safetensors").is_file());

    let merged = work.join("merged");
    cli::ok(
        "merge",
        &[
            "--model",
            model,
            "--adapter",
            adapter.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
    );
    assert!(merged.join("model.safetensors").is_file());

    let gguf = work.join("adapter.gguf");
    let out = cli::run(
        "merge",
        &[
            "--model",
            model,
            "--adapter",
            adapter.to_str().unwrap(),
            "--format",
            "gguf-lora",
            "--out",
            gguf.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !gguf.exists());
    assert!(
        text.contains("DoRA") && text.contains(adapter.to_str().unwrap()),
        "{text}"
    );

    // Resume: 2 steps, then on to 4, against 4 straight; the same losses and adapter bytes.
    let (whole, cut) = (work.join("whole"), work.join("cut"));
    run(&whole, "4", &dora);
    run(&cut, "2", &dora);
    let text = run(&cut, "4", &[&dora[..], &["--resume"]].concat());
    assert!(text.contains("resumed from"), "{text}");
    let losses = |d: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    assert_eq!(losses(&whole).len(), 4);
    assert_eq!(losses(&whole), losses(&cut), "resumed losses");
    let weights =
        |d: &std::path::Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&cut), "resumed adapter differs");
}
