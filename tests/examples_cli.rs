//! The example binaries end to end on the golden tiny LLaMA (with a byte-level tokenizer):
//! `finetune` trains and writes an adapter, metrics and a plot; `generate` and `merge` take
//! that adapter; merged logits equal adapter logits; `quantize` writes a bnb-4bit checkpoint
//! equal to quantizing on load; a `--resume` from another setup is refused with the checkpoint
//! left intact.
//!
//! `cargo test` builds the examples before it runs the tests; they are found next to this test
//! binary (`target/<profile>/examples/`).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_qlora::llama::LlamaForCausalLM;
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{LoraApplier, LoraModel, PeftAdapter};

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

use cli::{ok, run};

fn logits(model: &LlamaForCausalLM, device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 + 5) % 259).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 12]), device);
    model
        .forward(ids, None)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    qlora_testenv::compare::rel_err(a, b, "logits")
}

#[test]
fn finetune_generate_merge_quantize() {
    let tiny = cli::TinyRun::new("examples");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let out = work.join("run");
    let (m, d, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let common = [
        "--model",
        m,
        "--data",
        d,
        "--out",
        o,
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
        "3",
        "--save-every",
        "3",
        "--device",
        "flex",
        "--no-samples",
    ];
    let text = ok("finetune", &[&common[..], &["--steps", "6"]].concat());
    assert!(text.contains("gradient checkpointing: off"), "{text}");
    assert!(text.contains("held-out loss"), "{text}");
    let adapter = out.join("adapter");
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "loss.png",
    ] {
        assert!(out.join(f).is_file(), "finetune wrote no {f}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    // Step 0 (the held-out loss before training), then one line a step.
    assert_eq!(metrics.lines().count(), 7, "{metrics}");
    assert!(
        metrics.starts_with("{\"step\":0,\"eval_loss\":"),
        "{metrics}"
    );

    // With block gradient checkpointing (each decoder layer recomputed in the backward pass)
    // the run is the same run, to the bit.
    let ckpt_out = work.join("run-ckpt");
    let mut with_ckpt = common.to_vec();
    let o = with_ckpt.iter().position(|a| *a == "--out").unwrap();
    with_ckpt[o + 1] = ckpt_out.to_str().unwrap();
    let printed = ok(
        "finetune",
        &[&with_ckpt[..], &["--steps", "6", "--grad-checkpointing"]].concat(),
    );
    // The line is read off the model: the flag reached it.
    assert!(
        printed.contains("gradient checkpointing: block"),
        "{printed}"
    );
    let losses = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    let (a, b) = (losses(&out), losses(&ckpt_out));
    assert_eq!(a.len(), b.len());
    assert_eq!(a, b, "checkpointed losses differ");
    assert_eq!(
        std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(ckpt_out.join("adapter/adapter_model.safetensors")).unwrap(),
        "the checkpointed run's adapter differs"
    );

    // Resuming with another adapter shape is refused; the checkpoint stays as it was.
    let ckpt = |out: &Path| {
        let mut files: Vec<_> = walk(out)
            .into_iter()
            .filter(|p| !p.ends_with("loss.png"))
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = ckpt(&out);
    let mut bad = common.to_vec();
    let r = bad.iter().position(|a| *a == "--rank").unwrap();
    bad[r + 1] = "8";
    let res = run(
        "finetune",
        &[&bad[..], &["--steps", "9", "--resume"]].concat(),
    );
    let err = String::from_utf8_lossy(&res.stderr).to_string();
    assert!(
        !res.status.success() && err.contains("cannot resume"),
        "{err}"
    );
    assert_eq!(
        ckpt(&out),
        before,
        "a refused resume changed the output folder"
    );

    let a = adapter.to_str().unwrap();
    let gen_out = ok(
        "generate",
        &[
            "--model",
            m,
            "--adapter",
            a,
            "--prompt",
            "say apple",
            "--chat",
            "--max-new-tokens",
            "4",
            "--device",
            "flex",
        ],
    );
    assert!(gen_out.contains("new tokens"), "{gen_out}");

    let merged = work.join("merged");
    ok(
        "merge",
        &[
            "--model",
            m,
            "--adapter",
            a,
            "--out",
            merged.to_str().unwrap(),
        ],
    );
    assert!(merged.join("tokenizer.json").is_file());
    let device = Device::flex();
    let mut with_adapter =
        LlamaForCausalLM::load(&model, &LoraApplier::base_only(None, &device)).unwrap();
    with_adapter
        .load_adapter(&PeftAdapter::load(&adapter, &device).unwrap(), "default")
        .unwrap();
    let plain = LlamaForCausalLM::load(&model, &LoraApplier::base_only(None, &device)).unwrap();
    let merged_model =
        LlamaForCausalLM::load(&merged, &LoraApplier::base_only(None, &device)).unwrap();
    let (la, lm, lp) = (
        logits(&with_adapter, &device),
        logits(&merged_model, &device),
        logits(&plain, &device),
    );
    assert!(
        max_rel(&lm, &la) < 1e-4,
        "merged vs adapter: {}",
        max_rel(&lm, &la)
    );
    // The trained adapter changed the model (B is no longer zero).
    assert!(max_rel(&la, &lp) > 1e-4, "the adapter did nothing");

    let q = work.join("q");
    ok("quantize", &["--model", m, "--out", q.to_str().unwrap()]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    // Read as it is (no re-quantization), the file equals quantizing while loading.
    let nf4 = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let from_file = LlamaForCausalLM::load(&q, &nf4).unwrap();
    let on_load = LlamaForCausalLM::load(&model, &nf4).unwrap();
    assert_eq!(logits(&from_file, &device), logits(&on_load, &device));
    let bad = run(
        "quantize",
        &[
            "--model",
            m,
            "--out",
            q.to_str().unwrap(),
            "--blocksize",
            "100",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(!bad.status.success() && err.contains("blocksize"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `quantize --absmax-rounding cpu-table` of each golden family writes the tensors
/// transformers + bitsandbytes (CPU) wrote to its `model-nf4/` folder, byte for byte: packed
/// codes, 8-bit absmax codes, nested scales, offsets, maps, norms and embeddings.
#[test]
fn quantize_with_the_cpu_table_writes_bnbs_folder_byte_for_byte() {
    use safetensors::SafeTensors;
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/families");
    let work = cli::tmp("quantize-cpu-table");
    for name in ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"] {
        let out = work.join(name);
        ok(
            "quantize",
            &[
                "--model",
                golden.join(name).join("model").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--absmax-rounding",
                "cpu-table",
            ],
        );
        let ours = std::fs::read(out.join("model.safetensors")).unwrap();
        let theirs = std::fs::read(golden.join(name).join("model-nf4/model.safetensors")).unwrap();
        let (ours, theirs) = (
            SafeTensors::deserialize(&ours).unwrap(),
            SafeTensors::deserialize(&theirs).unwrap(),
        );
        let (mut a, mut b) = (ours.names(), theirs.names());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: tensor names");
        for n in a {
            let (x, y) = (ours.tensor(n).unwrap(), theirs.tensor(n).unwrap());
            assert_eq!(
                (x.dtype(), x.shape(), x.data()),
                (y.dtype(), y.shape(), y.data()),
                "{name}: {n}"
            );
        }
    }
    let bad = run("quantize", &["--absmax-rounding", "cuda"]);
    let err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(
        !bad.status.success() && err.contains("--absmax-rounding"),
        "{err}"
    );
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn merge_writes_an_adapter_as_llama_cpps_gguf_lora_adapter() {
    use burn_qlora::llama::GgufFile;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let golden = fixtures.join("golden/families/qwen2");
    let work = cli::tmp("merge-gguf-lora");
    std::fs::create_dir_all(&work).unwrap();
    let out = work.join("adapter.gguf");
    let text = ok(
        "merge",
        &[
            "--model",
            golden.join("model").to_str().unwrap(),
            "--adapter",
            golden.join("adapter").to_str().unwrap(),
            "--format",
            "gguf-lora",
            "--gguf-type",
            "q8_0",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(text.contains("as a GGUF LoRA adapter"), "{text}");
    // What llama.cpp's convert_lora_to_gguf.py --outtype q8_0 wrote for this adapter.
    let want = GgufFile::open(fixtures.join("gguf_lora/qwen2-q8_0.gguf")).unwrap();
    let got = GgufFile::open(&out).unwrap();
    assert_eq!(
        got.tensors.keys().collect::<Vec<_>>(),
        want.tensors.keys().collect::<Vec<_>>()
    );
    for (name, info) in &want.tensors {
        let mine = &got.tensors[name];
        assert_eq!((&mine.dims, mine.ty), (&info.dims, info.ty), "{name}");
        assert_eq!(
            got.read_f32(name).unwrap(),
            want.read_f32(name).unwrap(),
            "{name}"
        );
    }
    std::fs::remove_dir_all(work).unwrap();
}

#[test]
fn merge_writes_the_merged_model_as_a_gguf_model_file() {
    use burn_qlora::llama::{GgmlType, GgufFile};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let work = cli::tmp("merge-gguf");
    let out = work.join("merged.gguf");
    let args = |out: &Path| {
        vec![
            "--model".to_string(),
            fixtures.join("score-models/llama3").display().to_string(),
            "--adapter".into(),
            fixtures.join("gguf-merged/adapter").display().to_string(),
            "--format".into(),
            "gguf".into(),
            "--gguf-type".into(),
            "q8_0".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let a = args(&out);
    let text = ok("merge", &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains("(GGUF, Q8_0)"), "{text}");
    // The converter's file for the same merge (the library test compares every value).
    let want = GgufFile::open(fixtures.join("gguf-merged/merged-q8_0.gguf")).unwrap();
    let got = GgufFile::open(&out).unwrap();
    assert_eq!(
        got.tensors.keys().collect::<Vec<_>>(),
        want.tensors.keys().collect::<Vec<_>>()
    );
    assert_eq!(got.tensors["blk.0.attn_q.weight"].ty, GgmlType::Q8_0);
    // A folder as --out is refused before any work.
    let a = args(&work);
    let res = run("merge", &a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("--out") && err.contains("one .gguf file"),
        "{err}"
    );
    std::fs::remove_dir_all(work).unwrap();
}
