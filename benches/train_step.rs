//! Training-step throughput of the peer benchmark's model (`benches/peer`): a LLaMA with
//! hidden 256, ffn 688, 4 layers, 8 heads, vocab 32000, untied, fp32; batch 4 × 256 random
//! tokens with labels = inputs; AdamW lr 1e-4, no weight decay. Three modes:
//! `full` (every parameter trained), `lora` (f32 base, LoRA r16 α32 on the seven linears) and
//! `qlora` (the same adapters over an NF4 + double-quant base).
//!
//! `cargo bench --bench train_step` runs every mode, each in its own process (so peak RSS is
//! per mode), and prints a table: median step time after warm-up, tokens/s, peak RSS.
//! `-- --shape llama7b --layers N --batch 1 --seq 512 --mode qlora` trains a LLaMA-7B-shaped
//! stack of N layers instead (memory per layer: compare the peak RSS of two N);
//! `-- --shape smollm2 --vocab 49152` the default model (SmolLM2-135M-Instruct) with its real
//! weights when it is cached (its shape with random weights otherwise, or with
//! `--random-weights`); `--model PATH` any model's real weights.
//! `-- --compute-dtype auto|f32|bf16` as `finetune`'s (f32 by default here).
//! `-- --peer DIR` adds the peer's figures from `DIR/{full,lora,qlora}.json` (written by
//! `bench_train.py`) and the ratios; `benches/compare_peer.sh` runs both sides in one go.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use burn_qlora::llama::{
    LlamaConfig, LlamaForCausalLM, causal_lm_loss, causal_lm_loss_fused, default_model_path,
};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::LoraApplier;
use clap::Parser;

#[allow(dead_code)]
#[path = "../examples/common/mod.rs"]
mod common;

#[derive(Parser, Debug)]
#[command(about = "Training-step benchmark on the peer's 19.5M LLaMA (full / lora / qlora)")]
struct Args {
    /// full, lora, qlora, or all (each in its own process).
    #[arg(long, default_value = "all")]
    mode: String,
    /// Timed steps after warm-up.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Warm-up steps (not timed).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// `peer` (hidden 256, ffn 688, 8 heads, 4 layers), `llama7b` (hidden 4096, ffn 11008,
    /// 32 heads, 2 layers unless `--layers` says otherwise: a LLaMA-7B-shaped layer stack) or
    /// `smollm2` (the default model's: hidden 576, ffn 1536, 9 heads over 3 kv heads, 30
    /// layers, tied head; with `--vocab 49152`).
    #[arg(long, default_value = "peer")]
    shape: String,
    /// Real weights from this model (HF folder, bnb-4bit folder or .gguf); its config replaces
    /// the shape's. With `--shape smollm2` the cached default model (SmolLM2-135M-Instruct) is
    /// used when present, unless `--random-weights`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Random weights of the shape even where the default model is cached.
    #[arg(long)]
    random_weights: bool,
    /// Number of decoder layers (default: the shape's).
    #[arg(long)]
    layers: Option<usize>,
    /// Folder with the peer's `full.json`, `lora.json`, `qlora.json` (and `<mode>-bf16.json`
    /// for its bf16-autocast runs, each a row of its own).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// With `--mode all`: the modes to run, comma separated.
    #[arg(long, default_value = "full,lora,qlora", value_delimiter = ',')]
    modes: Vec<String>,
    /// Write this mode's result as JSON here (used by `--mode all`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also time the phases of each step (blocks, head, loss, backward, optimizer).
    #[arg(long)]
    breakdown: bool,
    /// auto, f32 or bf16: how the CPU kernels multiply (as `finetune --compute-dtype`).
    #[arg(long, value_enum, default_value = "f32")]
    compute_dtype: common::compute::ComputeDtype,
    /// Compute the logits, then the loss (instead of the fused head + loss).
    #[arg(long)]
    unfused: bool,
    /// DoRA adapters (PEFT's `use_dora`) in the lora and qlora modes.
    #[arg(long)]
    use_dora: bool,
    /// none, block or offload: as `finetune --grad-checkpointing` (each decoder layer kept as
    /// its input and recomputed in the backward pass).
    #[arg(long, value_enum, default_value = "none")]
    grad_checkpointing: common::checkpointing::Checkpointing,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// Makes every float parameter trainable (full fine-tuning).
struct TrainAll;
impl ModuleMapper for TrainAll {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.set_require_grad(true)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_mode(args: &Args, mode: &str) -> serde_json::Value {
    let mut shape = common::bench_model::Shape::named(&args.shape)
        .unwrap_or_else(|| panic!("unknown --shape `{}` (peer, llama7b, smollm2)", args.shape));
    shape.layers = args.layers.unwrap_or(shape.layers);
    // `--vocab` sets the vocabulary of every shape (the default model's: `--vocab 49152`).
    shape.vocab = args.vocab;
    let layers = shape.layers;
    let weights = args.model.clone().or_else(|| {
        let cached = default_model_path();
        (args.shape == "smollm2" && !args.random_weights && cached.is_file()).then_some(cached)
    });
    let rss_start = common::peak_rss_mib();
    let config = shape.config(args.seq);
    // As `finetune` does: freed buffers stay in the process for the next step.
    burn_qlora::backend::keep_freed_host_memory();
    let compute = common::compute::apply_compute_dtype(
        args.compute_dtype,
        &Device::flex(),
        "--compute-dtype",
    )
    .expect("--compute-dtype");
    eprintln!("{mode}: {compute}");
    let device = Device::flex().autodiff();
    device.seed(0);
    let lora = burn_qlora::nn::LoraConfig {
        use_dora: args.use_dora,
        ..common::bench_model::lora_seven_linears()
    };
    let applier = match mode {
        "full" => LoraApplier::base_only(None, &device),
        "lora" => LoraApplier::new(lora, None, &device).expect("lora config"),
        "qlora" => LoraApplier::new(lora, Some(QuantConfig::qlora()), &device).expect("config"),
        other => panic!("unknown mode `{other}` (full, lora, qlora)"),
    };
    // Real weights where given or cached; else transformers' init statistics, the same weights
    // in every run (seed 0).
    let (mut model, vocab) = match &weights {
        Some(p) => {
            let vocab = LlamaConfig::of_model(p).expect("--model config").vocab_size;
            (LlamaForCausalLM::load(p, &applier).expect("--model"), vocab)
        }
        None => (config.init(&applier, 0).expect("model"), args.vocab),
    };
    if mode == "full" {
        model = model.map(&mut TrainAll);
    }
    let mut model = model.with_gradient_checkpointing(args.grad_checkpointing.into());
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(0.0)
        .with_epsilon(1e-8)
        .init();
    let ids = common::bench_model::random_ids(args.batch, args.seq, vocab, &device);
    let rss_ready = common::peak_rss_mib();
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let mut phases: Vec<[f64; 5]> = Vec::new();
    for i in 0..args.warmup + args.steps {
        let t = Instant::now();
        // Flex runs eagerly, so the phase times are the work of each phase.
        let hidden = model.forward_hidden(ids.clone(), None);
        let t_blocks = t.elapsed().as_secs_f64();
        // The head's matmul fused into the loss (`LlamaForCausalLM::loss`), or with
        // `--unfused` the logits first.
        let (loss, t_head) = if args.unfused {
            let logits = model.logits(hidden);
            let t_head = t.elapsed().as_secs_f64();
            (causal_lm_loss(logits, ids.clone()), t_head)
        } else {
            (
                causal_lm_loss_fused(hidden, model.head_weight(), ids.clone()),
                t_blocks,
            )
        };
        let t_loss = t.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t_backward = t.elapsed().as_secs_f64();
        model = optim.step(1e-4, model, grads);
        if args.breakdown && i >= args.warmup {
            phases.push([
                t_blocks,
                t_head - t_blocks,
                t_loss - t_head,
                t_backward - t_loss,
                t.elapsed().as_secs_f64() - t_backward,
            ]);
        }
        let l: f32 = loss.into_scalar();
        losses.push(l);
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let med = median(&mut times.clone());
    if !phases.is_empty() {
        let names = [
            "blocks forward",
            "head forward",
            "loss (fused: with the head)",
            "backward",
            "optimizer",
        ];
        let parts: Vec<String> = (0..5)
            .map(|k| {
                let mut v: Vec<f64> = phases.iter().map(|p| p[k]).collect();
                format!("{} {:.0} ms", names[k], 1000.0 * median(&mut v))
            })
            .collect();
        eprintln!("{mode}: median phases: {}", parts.join(", "));
    }
    let tok = (args.batch * args.seq) as f64;
    serde_json::json!({
        "mode": mode, "median_step_s": med, "best_step_s": times.iter().cloned().fold(f64::MAX, f64::min),
        "tokens_per_s_median": tok / med, "step_s": times, "peak_rss_process_mib": common::peak_rss_mib(),
        "rss_start_mib": rss_start, "rss_model_ready_mib": rss_ready, "layers": layers, "shape": args.shape, "compute": compute, "grad_checkpointing": format!("{:?}", args.grad_checkpointing),
        "weights": weights.as_ref().map_or("random".to_string(), |p| p.display().to_string()), "loss_first": losses[0], "loss_last": losses[losses.len() - 1],
    })
}

fn peer(args: &Args, mode: &str) -> Option<serde_json::Value> {
    let p = args.peer.as_ref()?.join(format!("{mode}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn main() {
    let args = Args::parse();
    if args.mode != "all" {
        let r = run_mode(&args, &args.mode);
        match &args.json {
            Some(p) => std::fs::write(p, r.to_string()).expect("write result"),
            None => println!("{r}"),
        }
        return;
    }
    let dir = std::env::temp_dir().join(format!("qlora-train-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = std::env::current_exe().expect("own path");
    let mut rows = Vec::new();
    for mode in args.modes.iter().map(String::as_str) {
        assert!(
            ["full", "lora", "qlora"].contains(&mode),
            "--modes: `{mode}` is not full, lora or qlora"
        );
        let out = dir.join(format!("{mode}.json"));
        let status = Command::new(&exe)
            .args(["--mode", mode, "--json"])
            .arg(&out)
            .args([
                "--steps",
                &args.steps.to_string(),
                "--warmup",
                &args.warmup.to_string(),
            ])
            .args([
                "--batch",
                &args.batch.to_string(),
                "--seq",
                &args.seq.to_string(),
            ])
            .args(["--vocab", &args.vocab.to_string(), "--shape", &args.shape])
            .args(
                args.layers
                    .iter()
                    .flat_map(|l| ["--layers".to_string(), l.to_string()]),
            )
            .args(args.unfused.then_some("--unfused"))
            .args(args.use_dora.then_some("--use-dora"))
            .args([
                "--grad-checkpointing",
                &format!("{:?}", args.grad_checkpointing).to_lowercase(),
            ])
            .args(args.random_weights.then_some("--random-weights"))
            .args(
                args.model
                    .iter()
                    .flat_map(|m| ["--model".to_string(), m.display().to_string()]),
            )
            .args([
                "--compute-dtype",
                match args.compute_dtype {
                    common::compute::ComputeDtype::Auto => "auto",
                    common::compute::ComputeDtype::F32 => "f32",
                    common::compute::ComputeDtype::Bf16 => "bf16",
                },
            ])
            .status()
            .expect("run a mode");
        assert!(status.success(), "mode {mode} failed");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        rows.push((mode, r));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "\ntrain step, shape {}, batch {} x {} tokens, vocab {}, {threads} threads, median of {} after {} warm-up",
        args.shape, args.batch, args.seq, args.vocab, args.steps, args.warmup
    );
    if let Some((_, r)) = rows.first() {
        println!(
            "weights: {}; {}",
            r["weights"].as_str().unwrap_or("?"),
            r["compute"].as_str().unwrap_or("?")
        );
    }
    println!(
        "| mode | ours ms | ours tokens/s | ours peak RSS MiB | peer tokens/s | peer peak RSS MiB | tokens/s ratio | RSS ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for (mode, r) in &rows {
        let (tps, rss) = (f(r, "tokens_per_s_median"), f(r, "peak_rss_process_mib"));
        for (variant, label) in [
            (mode.to_string(), ""),
            (format!("{mode}-bf16"), " (peer bf16 autocast)"),
        ] {
            let Some(p) = peer(&args, &variant) else {
                if label.is_empty() {
                    println!(
                        "| {mode} | {:.0} | {tps:.0} | {rss:.0} | | | | |",
                        1000.0 * f(r, "median_step_s")
                    );
                }
                continue;
            };
            let (ptps, prss) = (f(&p, "tokens_per_s_median"), f(&p, "peak_rss_process_mib"));
            println!(
                "| {mode}{label} | {:.0} | {tps:.0} | {rss:.0} | {ptps:.0} | {prss:.0} | {:.2} | {:.2} |",
                1000.0 * f(r, "median_step_s"),
                tps / ptps,
                rss / prss
            );
        }
    }
    let step = |m: &str| {
        rows.iter()
            .find(|(n, _)| *n == m)
            .map(|(_, r)| f(r, "median_step_s"))
    };
    if let (Some(l), Some(q)) = (step("lora"), step("qlora")) {
        println!("\nQLoRA step / LoRA step: {:.2}", q / l);
    }
}
