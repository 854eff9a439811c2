//! Fine-tunes a LLaMA-style model with QLoRA: NF4 + double-quantized frozen base, LoRA adapters
//! on the block linears, loss on the responses only.
//!
//! Bare, `cargo run --release --example finetune` trains SmolLM2-135M-Instruct (fetched on first
//! use) on the bundled chitchat conversations and writes the adapter, metrics and a loss plot
//! under `runs/finetune/`. `--help` lists every option.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use burn_qlora::llama::{LlamaConfig, LlamaForCausalLM, LlamaTokenizer, TokenizerFiles};
use burn_qlora::nn::{
    AdapterDtype, LoraApplier, LoraConfig, LoraModel, ModuleSelector, ParameterCount,
    TrainableTokenIndices,
};
use burn_qlora::train::{
    FitEvent, FitOptions, OptimizerKind, Schedule, TrainConfig, Trainer, find_checkpoint,
    load_dataset, pack, plot_losses, split, steps_for_epochs,
};
use clap::Parser;
use common::checkpointing::{self, memory_advice};
use indicatif::{ProgressBar, ProgressStyle};

#[allow(dead_code)]
mod common;

#[global_allocator]
static ALLOC: common::oom::ReportingAlloc = common::oom::ReportingAlloc;

#[derive(Parser, Debug)]
#[command(about = "QLoRA fine-tuning of a LLaMA-style model (HF folder, bnb-4bit folder or GGUF)")]
struct Args {
    /// Model: a HF folder, a bnb-4bit folder or a .gguf file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data: a .jsonl, .json or .txt file (each also .gz), a .parquet file, or a dataset
    /// folder (`datasets.save_to_disk`'s, or the hub's `data/train-*.parquet`; see --split);
    /// default: the bundled chitchat conversations.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    data_args: common::data::DataArgs,
    /// Output folder (adapter, checkpoint, metrics, plot).
    #[arg(long, default_value = "runs/finetune")]
    out: PathBuf,
    /// Optimizer steps (default: 30, about 6 minutes for the default model on 2 CPU cores,
    /// unless --epochs is given).
    #[arg(long, conflicts_with = "epochs", value_parser = common::args::at_least_1)]
    steps: Option<usize>,
    /// Passes over the training data instead of a step count.
    #[arg(long, value_parser = common::args::positive)]
    epochs: Option<f64>,
    /// Samples per micro-batch.
    #[arg(long, default_value_t = 4, value_parser = common::args::at_least_1)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = common::args::at_least_1)]
    grad_accum: usize,
    /// The chat template for chat data and prompts: `chatml`, or a Jinja template file
    /// (default: the model's own; a model without one refuses chat data, as transformers does).
    #[arg(long)]
    chat_template: Option<String>,
    /// Longest sample in tokens (at least 2, at most the model's context,
    /// `max_position_embeddings`) [default: 256, or the model's context if shorter].
    #[arg(long, value_parser = common::args::seq_len)]
    seq_len: Option<usize>,
    /// Pack samples into rows of --seq-len tokens, Best-Fit-Decreasing (TRL's bfd): fewer,
    /// fuller micro-batches of --batch-size rows. With padding-free batches the packed samples
    /// stay apart (the same loss per sample as unpacked), so it is on by default with them;
    /// with --padding-free false it is off by default, and `--packing true` then lets the
    /// joined samples see each other, as plain packing does.
    #[arg(long, action = clap::ArgAction::Set)]
    packing: Option<bool>,
    /// Padding-free batches (TRL's padding_free): the samples of a micro-batch concatenated
    /// with no padding, positions restarting per sample and attention kept inside each, the
    /// same loss per sample as padding (true, the default); false pads every micro-batch to
    /// its longest sample.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    padding_free: bool,
    /// Held-out fraction of the data, in [0, 1).
    #[arg(long, default_value_t = 0.1, value_parser = common::args::fraction)]
    eval_fraction: f64,
    /// Peak learning rate (above 0).
    #[arg(long, default_value_t = 1e-3, value_parser = common::args::positive)]
    lr: f64,
    /// constant, linear or cosine (after warm-up).
    #[arg(long, default_value = "cosine")]
    schedule: Schedule,
    /// Warm-up steps.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Clip the global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 0.3, value_parser = common::args::non_negative)]
    max_grad_norm: f64,
    /// Continue training a PEFT adapter folder (f32, f16 or bf16) instead of a fresh one: its
    /// adapter_config.json gives rank, alpha, dropout, targets and modules_to_save, so the
    /// options that set those are refused with it.
    #[arg(long, conflicts_with_all = ["rank", "alpha", "dropout", "targets", "exclude_modules", "modules_to_save", "rslora", "use_dora", "trainable_tokens", "ensure_weight_tying"])]
    adapter: Option<PathBuf>,
    /// Precision of the saved adapter: f32, f16 or bf16 (default: that of --adapter, else
    /// f32). Checkpoints are always f32, so that a resume is exact.
    #[arg(long)]
    save_dtype: Option<common::adapter::SaveDtype>,
    /// LoRA rank (at least 1).
    #[arg(long, default_value_t = 16, value_parser = common::args::at_least_1)]
    rank: usize,
    /// LoRA alpha (above 0).
    #[arg(long, default_value_t = 32.0, value_parser = common::args::positive)]
    alpha: f64,
    /// LoRA dropout, in [0, 1).
    #[arg(long, default_value_t = 0.05, value_parser = common::args::fraction)]
    dropout: f64,
    /// Adapted modules: comma-separated names, or all-linear.
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// Modules left out of --targets (PEFT's exclude_modules), comma separated names matched as
    /// target_modules are (the name or a dotted suffix): for example down_proj, or
    /// layers.0.self_attn.q_proj.
    #[arg(long, value_delimiter = ',')]
    exclude_modules: Vec<String>,
    /// Modules trained in full and saved with the adapter (PEFT's modules_to_save), comma
    /// separated: for example lm_head,embed_tokens.
    #[arg(long, value_delimiter = ',')]
    modules_to_save: Vec<String>,
    /// Tokens whose embedding rows train (PEFT's trainable_token_indices), comma separated,
    /// each a token as the tokenizer spells it or an id: for example "<|im_end|>" when the base
    /// model never saw its chat tokens, so that the tuned model learns to stop. On a model
    /// whose head is tied to its embedding the head uses the trained rows too.
    #[arg(long, value_delimiter = ',')]
    trainable_tokens: Vec<String>,
    /// PEFT's ensure_weight_tying: on a tied model, a table named in --modules-to-save stays
    /// the one table of embedding and head (without it the other keeps the base's weights).
    #[arg(long)]
    ensure_weight_tying: bool,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    rslora: bool,
    /// DoRA (PEFT's use_dora): each adapted layer also trains a magnitude per output row, the
    /// weight split into magnitude and direction (Liu et al. 2024); QDoRA on a 4-bit base.
    /// Slower per step than LoRA: the weight norm is taken every step, as in PEFT.
    #[arg(long)]
    use_dora: bool,
    /// How new adapters start (PEFT's `init_lora_weights`): default (A Kaiming-uniform, B 0),
    /// gaussian (A ~ N(0, 1/r), B 0), pissa / pissa_niter_K (A, B from the weight's top-r
    /// singular vectors, full or randomized SVD; the base keeps the residual) or loftq (base
    /// and adapter fitted together; nearest the float weight with --alpha = --rank). PiSSA and
    /// LoftQ need a float base (not a bnb-4bit folder).
    #[arg(long, default_value = "default", value_parser = common::args::init_lora_weights)]
    init_lora_weights: burn_qlora::nn::InitLoraWeights,
    /// LoftQ's alternations of NF4 quantization and SVD (PEFT's `loftq_iter`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    loftq_iter: u32,
    /// Also write `<out>/adapter-lora`: the PiSSA adapter converted to plain LoRA on the
    /// original weights (PEFT's `path_initial_model_for_weight_conversion`), rank doubled, for
    /// the unmodified base beside other adapters. Needs --init-lora-weights pissa or
    /// pissa_niter_K; exact on a float base, near on a 4-bit one (as PEFT warns).
    #[arg(long, conflicts_with = "adapter")]
    save_as_lora: bool,
    /// adamw, paged-adamw or adamw8bit.
    #[arg(long, default_value = "paged-adamw")]
    optimizer: OptimizerKind,
    /// Device bytes of optimizer state kept resident with paged-adamw (default: all); only
    /// with --optimizer paged-adamw.
    #[arg(long)]
    paged_budget: Option<usize>,
    /// Gradient checkpointing: `block` keeps only each decoder layer's input and recomputes
    /// the layer in the backward pass (the same losses and adapter, bit for bit; one layer's
    /// activations held instead of all; one more forward pass per step); `offload` keeps those
    /// inputs in host memory (for a GPU; on the CPU it is `block`); `none` keeps every
    /// activation. `--grad-checkpointing` alone is `block`.
    #[arg(
        long,
        value_enum,
        default_value = "none",
        num_args = 0..=1,
        default_missing_value = "block"
    )]
    grad_checkpointing: common::checkpointing::Checkpointing,
    #[command(flatten)]
    quant: common::quant::QuantArgs,
    /// How the CPU multiplies: `bf16` rounds the operands of the 4-bit linears' and the
    /// fused head's products to bf16 and accumulates in f32 on AMX (else AVX512-BF16);
    /// activations, norms, softmax and the loss stay f32. `auto` (the default) uses bf16 on
    /// Flex where the CPU has AMX (3.3-4.5x our f32 GEMM, measured), else f32 (AVX512-BF16
    /// alone measured slower than f32; AVX2-only machines have no bf16 products). The choice
    /// and the tier are printed. GPUs compute in f32 so far.
    #[arg(long, value_enum, default_value = "auto")]
    compute_dtype: common::compute::ComputeDtype,
    /// auto (CUDA or wgpu when built with that feature, else flex), flex (pure-Rust CPU),
    /// cpu (the same), wgpu, cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Data-parallel training on several devices, comma separated (for example
    /// cuda:0,cuda:1; wgpu:cpu,wgpu:default makes two device instances on one adapter). Each
    /// micro-batch is split across them; the first device runs the optimizer and writes the
    /// checkpoints. Replaces --device.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Evaluate every N steps (and after the last).
    #[arg(long, default_value_t = 10, value_parser = common::args::at_least_1)]
    eval_every: usize,
    /// Save a checkpoint every N steps (and after the last).
    #[arg(long, default_value_t = 10, value_parser = common::args::at_least_1)]
    save_every: usize,
    /// Resume from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Seed of data order, split, adapter init and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No before/after sample answers.
    #[arg(long)]
    no_samples: bool,
}

/// The LoRA config of a fresh adapter, from the command line.
fn fresh_lora(
    args: &Args,
    model_path: &std::path::Path,
    trainable_token_indices: Option<TrainableTokenIndices>,
) -> LoraConfig {
    let targets = if args.targets == "all-linear" {
        ModuleSelector::Pattern("all-linear".into())
    } else {
        ModuleSelector::List(
            args.targets
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
        )
    };
    LoraConfig {
        r: args.rank,
        lora_alpha: args.alpha,
        lora_dropout: args.dropout,
        target_modules: Some(targets),
        exclude_modules: (!args.exclude_modules.is_empty())
            .then(|| ModuleSelector::List(args.exclude_modules.clone())),
        use_rslora: args.rslora,
        use_dora: args.use_dora,
        modules_to_save: (!args.modules_to_save.is_empty()).then(|| args.modules_to_save.clone()),
        trainable_token_indices,
        ensure_weight_tying: args.ensure_weight_tying,
        init_lora_weights: common::args::with_loftq_iter(args.init_lora_weights, args.loftq_iter),
        base_model_name_or_path: Some(model_path.display().to_string()),
        task_type: Some("CAUSAL_LM".into()),
        ..LoraConfig::default()
    }
}

fn main() {
    let args = Args::parse();
    let job = common::mpi::Job::start().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    // A panic on one rank ends the whole job too (the others wait in a sum for it).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(args, &job))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => job.fail(&e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            job.fail(&format!("panicked: {what}"))
        }
    }
}

fn run(args: Args, job: &common::mpi::Job) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    // Each step's buffers reuse the last step's memory instead of fresh, kernel-zeroed pages.
    burn_qlora::backend::keep_freed_host_memory();
    if args.paged_budget.is_some() && !matches!(args.optimizer, OptimizerKind::PagedAdamW { .. }) {
        return Err(format!(
            "--paged-budget applies to --optimizer paged-adamw only (this run uses {:?})",
            args.optimizer
        )
        .into());
    }
    if args.save_as_lora {
        common::adapter::check_save_as_lora(args.init_lora_weights)?;
    }
    if args.resume && find_checkpoint(&args.out).is_none() {
        return Err(format!("--resume: no checkpoint in {}", args.out.display()).into());
    }
    let model_path = common::model_path(&args.model)?;
    let data_path = common::data_path(&args.data)?;
    if let Some(dir) = &args.adapter {
        common::check_exists(dir, "--adapter")?;
    }
    let devices = args
        .devices
        .iter()
        .map(|d| common::device(d.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let base = match devices.first() {
        Some(d) => d.clone(),
        None => common::device(&job.device_name(&args.device))?,
    };
    let compute =
        common::compute::apply_compute_dtype(args.compute_dtype, &base, "--compute-dtype")?;
    let quant = args.quant.config(&model_path)?;
    let ad = base.clone().autodiff();
    let on_host = devices.iter().chain([&base]).all(|d| *d == Device::flex());
    ad.seed(args.seed);

    let context = LlamaConfig::of_model(&model_path)?.max_position_embeddings;
    let seq_len = match args.seq_len {
        Some(n) if n > context => {
            return Err(format!(
                "--seq-len {n} is past the model's context: {} gives max_position_embeddings {context}",
                model_path.display()
            )
            .into());
        }
        Some(n) => n,
        None => 256.min(context),
    };
    let mut tok = LlamaTokenizer::load(&model_path)?;
    common::apply_chat_template_option(&mut tok, &args.chat_template)?;
    let opts = args.data_args.options(seq_len)?;
    let (samples, report) = load_dataset(&data_path, &tok, &opts)?;
    let (train_idx, eval_idx) = split(samples.len(), args.eval_fraction, args.seed);
    let pick = |idx: &[usize]| idx.iter().map(|&i| samples[i].clone()).collect::<Vec<_>>();
    let mut train = pick(&train_idx);
    let eval = pick(&eval_idx);
    let packing = args.packing.unwrap_or(args.padding_free);
    if packing {
        train = pack(train, seq_len);
    }
    let lengths: Vec<usize> = samples.iter().map(|s| s.input_ids.len()).collect();
    println!(
        "data: {}{} ({} records: {}; {} skipped, {} truncated) -> {} train / {} held-out \
         samples, {:.0} tokens on average, longest {}",
        data_path.display(),
        common::data::files(&report),
        report.records,
        common::data::forms(&report),
        report.skipped,
        report.truncated,
        train_idx.len(),
        eval.len(),
        lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64,
        lengths.iter().max().unwrap_or(&0)
    );
    if packing {
        println!(
            "packing: {} train samples in {} rows of up to {seq_len} tokens (Best-Fit-Decreasing)",
            train_idx.len(),
            train.len()
        );
    }

    let (model, lora, resumed_dtype) = match &args.adapter {
        Some(dir) => {
            let (model, lora, dtype) =
                common::adapter::load_with_adapter(&model_path, dir, quant, &ad)?;
            (model, lora, Some(dtype))
        }
        None => {
            let tokens = common::adapter::trainable_token_ids(&args.trainable_tokens, &tok)?;
            let lora = fresh_lora(&args, &model_path, tokens);
            let applier = LoraApplier::new(lora.clone(), quant, &ad)?;
            (LlamaForCausalLM::load(&model_path, &applier)?, lora, None)
        }
    };
    // PiSSA's start, for --save-as-lora: the initialisation is the same bits on every run, so a
    // resumed run takes it here too, before the checkpoint's weights replace it.
    let initial = args
        .save_as_lora
        .then(|| model.adapter("default", lora.clone()));
    let model = model.with_gradient_checkpointing(args.grad_checkpointing.into());
    let save_dtype = args
        .save_dtype
        .map(AdapterDtype::from)
        .or(resumed_dtype)
        .unwrap_or_default();
    println!(
        "model: {} ({})",
        model_path.display(),
        ParameterCount::of(&model)
    );
    println!("peak RSS after loading: {:.0} MiB", common::peak_rss_mib());
    println!("base: {}", common::quant::describe(quant));
    println!("{compute}");
    // Read off the model, so the line says what the step does.
    println!(
        "gradient checkpointing: {}",
        checkpointing::describe(model.gradient_checkpointing())
    );
    println!(
        "batches: {}",
        if args.padding_free {
            "padding-free (samples concatenated, positions and attention per sample)"
        } else {
            "padded to each micro-batch's longest sample"
        }
    );
    // Ids from a tokenizer of another model (or with tokens added beyond vocab_size) would
    // index past the embedding table: refused here, before any sample runs.
    let data_name = data_path.display().to_string();
    for s in train.iter().chain(&eval) {
        model.check_token_ids(&s.input_ids, &data_name)?;
    }
    let pad = tok.pad_id(model.config.vocab_size);
    model.check_token_ids(
        &[pad],
        "the padding token (the tokenizer's pad or eos token)",
    )?;

    let question = "Hi! How was your weekend?";
    // Rank 0 alone prints, so the other ranks need not generate.
    if !args.no_samples && job.rank() == 0 {
        println!(
            "before: {question} -> {:?}",
            common::sample::sample_answer(&model, &tok, question)?
        );
    }

    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => steps_for_epochs(train.len(), args.batch_size, args.grad_accum, e),
        (None, None) => 30,
    };
    let config = TrainConfig {
        steps,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        lr: args.lr,
        schedule: args.schedule,
        warmup: args.warmup,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        optimizer: match args.optimizer {
            OptimizerKind::PagedAdamW { .. } => OptimizerKind::PagedAdamW {
                budget: args.paged_budget.unwrap_or(usize::MAX),
            },
            o => o,
        },
        seed: args.seed,
        padding_free: args.padding_free,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, lora, "default", train, eval, pad, config)?;
    if job.size() > 1 {
        trainer.set_collective(job.collective.clone())?;
        println!(
            "data parallel across {} MPI processes: each micro-batch of {} split across them, \
             the adapter's gradients summed every step; rank 0 writes the files",
            job.size(),
            args.batch_size
        );
    }
    if devices.len() > 1 {
        trainer.set_devices(&devices)?;
        println!(
            "data parallel on {} devices ({}): each micro-batch of {} split across them",
            devices.len(),
            args.devices.join(", "),
            args.batch_size
        );
    }
    if args.resume {
        let dir = find_checkpoint(&args.out)
            .ok_or_else(|| format!("--resume: no checkpoint in {}", args.out.display()))?;
        trainer.resume(&dir)?;
        println!(
            "resumed from {} at step {}",
            dir.display(),
            trainer.state.step
        );
    }
    let who = job.who();
    common::oom::set_advice(format!(
        "\nerror{}{who}: out of host memory during training. Checkpoints in {} are written \
         whole or not at all, so the last one (if any) is intact; {}\n",
        if who.is_empty() { "" } else { " on " },
        args.out.display(),
        memory_advice(args.grad_checkpointing, on_host)
    ));
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template"),
    );
    bar.set_position(trainer.state.step as u64);
    // Without a terminal the bar draws nothing: a line per step instead.
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    job.say_checkpoint_on_sigterm(&args.out);
    let options = FitOptions::new(&args.out)
        .with_eval_every(args.eval_every)
        .with_save_every(args.save_every);
    let summary = trainer
        .fit(&options, |event| match event {
            FitEvent::InitialEval { loss } => {
                say(format!("held-out loss before training: {loss:.4}"))
            }
            FitEvent::Step(r) => {
                let tps = r.tokens as f64 / r.seconds;
                bar.set_message(format!("loss {:.4}  {tps:.0} tok/s", r.loss));
                bar.set_position(r.step as u64);
                if bar.is_hidden() {
                    println!(
                        "step {}/{steps}: loss {:.4}, lr {:.2e}, {tps:.0} tokens/s",
                        r.step, r.loss, r.lr
                    );
                }
            }
            FitEvent::Eval { step, loss } => say(format!("step {step}: held-out loss {loss:.4}")),
            FitEvent::Checkpoint { .. } => job.say_checkpoint_on_sigterm(&args.out),
        })
        .map_err(|e| {
            bar.abandon();
            checkpointing::step_failed(
                &args.out,
                args.grad_checkpointing,
                on_host,
                job.size() > 1,
                e,
            )
        })?;
    bar.finish();
    if job.size() > 1 {
        common::mpi::summary(&trainer)?;
        if job.rank() > 0 {
            return Ok(());
        }
    }

    let adapter_dir = args.out.join("adapter");
    trainer
        .model
        .adapter("default", trainer.lora.clone())
        .with_dtype(save_dtype)
        .save(&adapter_dir)?;
    if let Some(initial) = &initial {
        let trained = trainer.model.adapter("default", trainer.lora.clone());
        let line = common::adapter::save_as_lora(&trained, initial, &args.out, save_dtype, quant)?;
        println!("{line}");
    }
    plot_losses(
        &args.out.join("loss.png"),
        &trainer.state.history,
        trainer.state.initial_eval_loss,
    )?;
    if let (Some(first), Some(last)) = (summary.initial_eval_loss, summary.final_eval_loss) {
        println!(
            "held-out loss {first:.4} -> {last:.4} ({:+.1} %)",
            (last - first) / first * 100.0
        );
    }
    if trainer.device_count() > 1 {
        let t = trainer.last_transfer();
        println!(
            "moved between devices per step: {} bytes of adapter gradients, {} bytes of \
             adapter weights (the NF4 base stays on each device)",
            t.gradient_bytes, t.weight_bytes
        );
    }
    println!(
        "{} steps, {:.0} tokens/s, peak RSS {:.0} MiB, {:.0} s in all",
        summary.steps,
        summary.tokens_per_second(),
        common::peak_rss_mib(),
        started.elapsed().as_secs_f64()
    );
    if !args.no_samples {
        println!(
            "after: {question} -> {:?}",
            common::sample::sample_answer(&trainer.model, &tok, question)?
        );
    }
    println!(
        "adapter: {}  metrics: {}  plot: {}",
        adapter_dir.display(),
        args.out.join("metrics.jsonl").display(),
        args.out.join("loss.png").display()
    );
    Ok(())
}
