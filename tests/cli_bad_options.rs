//! The command-line corpus: option values and files a user can give the example programs that
//! cannot work. Each case runs the binary and must exit non-zero, without a panic, with an error
//! that names the option or file and says what is wrong, and leave the files it was given as
//! they were (the output folder, where given, gains no checkpoint).

use std::path::{Path, PathBuf};

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

/// Every file under `dir` with its bytes, to see that a failed run changed none.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

fn refused(name: &str, args: &[&str], words: &[&str], watched: &[&Path]) {
    let before: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    let out = cli::run(name, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "{name} {args:?}: exit {code:?} (a signal or panic?):\n{text}"
    );
    assert!(
        !text.contains("panicked"),
        "{name} {args:?} panicked:\n{text}"
    );
    for w in words {
        assert!(text.contains(w), "{name} {args:?}: no `{w}` in:\n{text}");
    }
    let after: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    assert!(before == after, "{name} {args:?} changed its input files");
}

/// A bf16 PEFT adapter of the golden tiny LLaMA.
const ADAPTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden/tiny-llama-lora-bf16"
);

#[test]
fn finetune_refuses_options_that_cannot_work() {
    let tiny = cli::TinyRun::new("bad-options");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let out = work.join("run");
    let (m, d, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let base = [
        "--model",
        m,
        "--data",
        d,
        "--out",
        o,
        "--device",
        "flex",
        "--no-samples",
    ];
    let cases: &[(&[&str], &[&str])] = &[
        (&["--batch-size", "0"], &["--batch-size", "at least 1"]),
        (&["--grad-accum", "0"], &["--grad-accum", "at least 1"]),
        (&["--eval-every", "0"], &["--eval-every", "at least 1"]),
        (&["--save-every", "0"], &["--save-every", "at least 1"]),
        (&["--seq-len", "0"], &["--seq-len", "at least 2"]),
        (&["--seq-len", "1"], &["--seq-len", "at least 2"]),
        (&["--rank", "0"], &["--rank", "at least 1"]),
        (&["--steps", "0"], &["--steps", "at least 1"]),
        (&["--lr", "NaN"], &["--lr", "finite"]),
        (&["--lr=-1e-3"], &["--lr", "above 0"]),
        (&["--lr", "0"], &["--lr", "above 0"]),
        (&["--lr", "inf"], &["--lr", "finite"]),
        (&["--alpha", "nan"], &["--alpha", "finite"]),
        (&["--eval-fraction", "1.5"], &["--eval-fraction", "[0, 1)"]),
        (&["--eval-fraction", "1"], &["--eval-fraction", "[0, 1)"]),
        (&["--eval-fraction=-0.1"], &["--eval-fraction", "[0, 1)"]),
        (&["--dropout", "1"], &["--dropout", "[0, 1)"]),
        (&["--max-grad-norm=-1"], &["--max-grad-norm", "0 or more"]),
        (&["--epochs", "0"], &["--epochs", "above 0"]),
        (&["--columns", "messages"], &["--columns", "OURS=THEIRS"]),
        (
            &["--format", "csv"],
            &["--format", "sharegpt, prompt-completion"],
        ),
        (
            &["--columns", "mesages=dialog"],
            &["--columns", "not a field the forms read"],
        ),
        (
            &["--columns", "messages=a,messages=b"],
            &["--columns", "name one field twice"],
        ),
        (
            &["--batch-size", "x"],
            &["--batch-size", "not a whole number"],
        ),
        (
            &["--optimizer", "adamw", "--paged-budget", "1000"],
            &["--paged-budget", "paged-adamw"],
        ),
        (&["--resume"], &["--resume", "no checkpoint"]),
        (&["--devices", "tpu"], &["unknown device `tpu`"]),
        // A device this machine does not have fails here, not at its first use.
        (
            &["--devices", "flex,wgpu:virtual:7"],
            &["wgpu:virtual:7", "does not exist"],
        ),
        // The tiny model's context is 128 positions.
        (
            &["--seq-len", "4096"],
            &["--seq-len 4096", "max_position_embeddings 128"],
        ),
        (
            &["--chat-template", "/nonexistent/template.jinja"],
            &["--chat-template", "/nonexistent/template.jinja"],
        ),
        // An adapter's own config sets its shape: options that would change it are refused.
        (
            &["--adapter", ADAPTER, "--rank", "4"],
            &["--adapter", "--rank", "cannot be used with"],
        ),
        (
            &["--adapter", ADAPTER, "--targets", "q_proj"],
            &["--adapter", "--targets", "cannot be used with"],
        ),
        (&["--save-dtype", "f64"], &["--save-dtype", "f64"]),
        (&["--blocksize", "63"], &["--blocksize", "63"]),
        (&["--blocksize", "8192"], &["--blocksize", "8192"]),
        (
            &["--quant-type", "none", "--blocksize", "64"],
            &["--blocksize 64", "--quant-type none"],
        ),
        (&["--quant-type", "int8"], &["--quant-type", "int8"]),
        (&["--compute-dtype", "f64"], &["--compute-dtype", "f64"]),
        (
            &["--grad-checkpointing", "balanced"],
            &["--grad-checkpointing", "balanced"],
        ),
        (
            &["--adapter", "/nonexistent/adapter"],
            &["--adapter", "/nonexistent/adapter", "no such file"],
        ),
    ];
    for (extra, words) in cases {
        let args = [&base[..], extra].concat();
        refused("finetune", &args, words, &[&model, &work]);
        assert!(
            !out.join("checkpoint").exists(),
            "{extra:?} wrote a checkpoint"
        );
    }
    let no_device = [&base[..6], &["--no-samples"][..]].concat();
    refused(
        "finetune",
        &[&no_device[..], &["--device", "wgpu:discrete:9"]].concat(),
        &["wgpu:discrete:9", "does not exist"],
        &[&model, &work],
    );
    assert!(!out.join("checkpoint").exists());
    // Files that do not exist are named as such.
    let missing = work.join("no-such-model");
    let args = [
        "--model",
        missing.to_str().unwrap(),
        "--data",
        d,
        "--out",
        o,
        "--no-samples",
    ];
    refused(
        "finetune",
        &args,
        &["--model", "no-such-model", "no such file"],
        &[&work],
    );
    let args = [
        &base[..2],
        &["--data", "/nonexistent/data.jsonl", "--out", o],
    ]
    .concat();
    refused(
        "finetune",
        &args,
        &["--data", "/nonexistent/data.jsonl", "no such file"],
        &[&work],
    );
    // An adapter whose config trains a module in full that its weights do not hold: training
    // it on would start that module from the base weights, a run that is partly fresh.
    let partial = work.join("partial-adapter");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        Path::new(ADAPTER).join("adapter_model.safetensors"),
        partial.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ADAPTER).join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    c["modules_to_save"] = serde_json::json!(["lm_head"]);
    std::fs::write(partial.join("adapter_config.json"), c.to_string()).unwrap();
    let args = [&base[..], &["--adapter", partial.to_str().unwrap()]].concat();
    refused(
        "finetune",
        &args,
        &[
            "--adapter",
            "partial-adapter",
            "modules_to_save",
            "`lm_head`",
        ],
        &[&model, &work],
    );
    assert!(!out.join("checkpoint").exists());
}

/// A tokenizer of another model: ids past the model's vocabulary are a named error in
/// `finetune` (before its first sample) and in `generate`, never Flex's out-of-bounds panic.
#[test]
fn token_ids_past_the_vocabulary_are_named_errors() {
    let model = cli::tiny_model("vocab");
    // The byte tokenizer gives ASCII letters ids 35 to 92; this model is cut to 50 embeddings.
    let config = model.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["vocab_size"] = 50.into();
    let small = cli::tmp("vocab-small");
    std::fs::write(small.join("config.json"), c.to_string()).unwrap();
    // Cut the embedding and head to 50 rows so the folder is a consistent model.
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut data = view.data().to_vec();
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            let row = shape[1] * 4;
            shape[0] = 50;
            data.truncate(50 * row);
        }
        tensors.push((name.to_string(), shape, data));
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        small.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if model.join(f).exists() {
            std::fs::copy(model.join(f), small.join(f)).unwrap();
        }
    }
    let work = cli::tmp("vocab-work");
    let data = cli::chat_data(&work);
    let out = work.join("run");
    let s = small.to_str().unwrap();
    refused(
        "finetune",
        &[
            "--model",
            s,
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "flex",
        ],
        &[
            "chat.jsonl",
            "token id",
            "past the model's vocabulary of 50",
        ],
        &[&small, &work],
    );
    assert!(!out.join("checkpoint").exists());
    refused(
        "generate",
        &["--model", s, "--prompt", "say apple", "--device", "flex"],
        &["the prompt", "token id", "vocabulary of 50"],
        &[&small],
    );
    for d in [&model, &small, &work] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn generate_refuses_options_it_would_not_use() {
    let model = cli::tiny_model("gen-options");
    let m = model.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--top-p", "0.5"], &["--temperature"]),
        (&["--top-k", "5"], &["--temperature"]),
        (&["--seed", "3"], &["--temperature"]),
        (
            &["--greedy", "--temperature", "0.7"],
            &["--greedy", "--temperature"],
        ),
        (&["--temperature", "0"], &["--temperature", "above 0"]),
        (&["--temperature", "nan"], &["--temperature", "finite"]),
        (
            &["--temperature", "1", "--top-p", "1.5"],
            &["--top-p", "(0, 1]"],
        ),
        (
            &["--max-new-tokens", "0"],
            &["--max-new-tokens", "at least 1"],
        ),
        (
            &["--prompt", "hi", "--system", "be brief"],
            &["--system", "--chat"],
        ),
        (
            &["--adapter", "/nonexistent/adapter"],
            &["--adapter", "no such file"],
        ),
    ];
    for (extra, words) in cases {
        let args = [&["--model", m, "--device", "flex"][..], extra].concat();
        refused("generate", &args, words, &[&model]);
    }
    let _ = std::fs::remove_dir_all(&model);
}

/// A model without a chat template refuses chat data, as transformers refuses to render one,
/// until `--chat-template` picks one; and 4-bit folders refuse settings that would not be kept.
#[test]
fn a_missing_template_and_4bit_folders_are_named_errors() {
    let tiny = cli::TinyRun::new("no-template");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let config = model.join("tokenizer_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&config, c.to_string()).unwrap();
    let out = work.join("run");
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "flex",
        "--no-samples",
        "--steps",
        "1",
    ];
    refused(
        "finetune",
        &args,
        &["chat.jsonl", "no chat template"],
        &[&model, &work],
    );
    assert!(!out.join("checkpoint").exists());
    // Chosen explicitly, ChatML trains.
    let text = cli::ok(
        "finetune",
        &[&args[..], &["--chat-template", "chatml"]].concat(),
    );
    assert!(text.contains("step 1/1"), "{text}");

    let nf4 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden/tiny-llama-nf4"
    );
    let ids = work.join("ids.safetensors");
    refused(
        "score",
        &[
            "--model",
            nf4,
            "--quantize",
            "fp4",
            "--ids",
            ids.to_str().unwrap(),
        ],
        &["--quantize fp4", "tiny-llama-nf4", "bnb-4bit", "nf4"],
        &[Path::new(nf4)],
    );
    // finetune on a bnb-4bit folder keeps its codes: other 4-bit settings are refused.
    for (extra, word) in [
        (&["--quant-type", "fp4"][..], "--quant-type fp4"),
        (&["--double-quant", "false"][..], "--double-quant false"),
        (&["--blocksize", "128"][..], "--blocksize 128"),
    ] {
        let run = work.join("bnb-run");
        let args = [
            &[
                "--model",
                nf4,
                "--data",
                data.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
                "--device",
                "flex",
                "--no-samples",
            ][..],
            extra,
        ]
        .concat();
        refused(
            "finetune",
            &args,
            &["a bnb-4bit folder", word, "tiny-llama-nf4"],
            &[Path::new(nf4)],
        );
        assert!(!run.join("checkpoint").exists(), "{extra:?} trained");
    }
    let q = work.join("q");
    for (extra, word) in [
        (&["--quant-type", "fp4"][..], "--quant-type fp4"),
        (&["--double-quant", "false"][..], "--double-quant false"),
        (&["--blocksize", "128"][..], "--blocksize 128"),
    ] {
        let args = [&["--model", nf4, "--out", q.to_str().unwrap()][..], extra].concat();
        refused(
            "quantize",
            &args,
            &["already a bnb-4bit folder", word],
            &[Path::new(nf4)],
        );
        assert!(!q.exists(), "{extra:?} wrote {}", q.display());
    }
}
