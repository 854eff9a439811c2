//! QLoRA fine-tuning with burn-train's `Learner`, for those who train with Burn's own loop and
//! dashboard rather than with [`burn_qlora::train::Trainer`]: the model is wrapped in a module
//! that implements `TrainStep` and `InferenceStep` for a causal-LM batch, and burn-train does
//! the rest (data loading, AdamW, the loss metric, Burn's terminal dashboard when run in a
//! terminal and its plain renderer otherwise, metric logs in the output folder).
//!
//! ```text
//! cargo run --release --example learner -- --steps 20    # the default model, the bundled chats
//! ```
//!
//! What this example leaves out and the `Trainer` (which `finetune` uses) has: clipping by the
//! global norm, paged and 8-bit optimizer state, checkpoints that resume bit for bit. The
//! adapter is saved in PEFT's format either way.

use std::io::IsTerminal;
use std::path::PathBuf;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::tensor::{Device, ExecutionError, Int, Tensor};
use burn::train::metric::{Adaptor, LossInput, LossMetric};
use burn::train::renderer::CliMetricsRenderer;
use burn::train::renderer::tui::TuiMetricsRendererWrapper;
use burn::train::{InferenceStep, ItemLazy, Learner, SupervisedTraining, TrainOutput, TrainStep};
use burn_qlora::llama::{LlamaForCausalLM, LlamaTokenizer, TokenizerFiles};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{LoraApplier, LoraConfig, LoraModel, ModuleSelector};
use burn_qlora::train::{Sample, collate, held_out_loss, load_dataset, permutation, split};
use clap::Parser;

#[allow(dead_code)]
mod common;

#[derive(Parser, Debug)]
#[command(about = "QLoRA fine-tuning with burn-train's Learner and Burn's dashboard")]
struct Args {
    /// Model: a HF folder, a bnb-4bit folder or a .gguf file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data, as `finetune --data` reads it (a file or a dataset folder; default: the
    /// bundled chitchat conversations).
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    data_args: common::data::DataArgs,
    /// Output folder (adapter, burn-train's metric logs).
    #[arg(long, default_value = "runs/learner")]
    out: PathBuf,
    /// Optimizer steps (one pass over this many batches, then a validation pass).
    #[arg(long, default_value_t = 20, value_parser = common::args::at_least_1)]
    steps: usize,
    /// Samples per batch.
    #[arg(long, default_value_t = 4, value_parser = common::args::at_least_1)]
    batch_size: usize,
    /// Longest sample in tokens (at least 2; longer ones are cut).
    #[arg(long, default_value_t = 256, value_parser = common::args::seq_len)]
    seq_len: usize,
    /// Learning rate (above 0).
    #[arg(long, default_value_t = 1e-3, value_parser = common::args::positive)]
    lr: f64,
    /// LoRA rank (at least 1).
    #[arg(long, default_value_t = 16, value_parser = common::args::at_least_1)]
    rank: usize,
    /// auto, flex, cpu, wgpu or cuda (as `finetune --device`).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Seed of the split, the data order and the adapter init.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The QLoRA model as burn-train sees it: a module with a training and a validation step.
#[derive(Module, Debug)]
struct CausalLmLearner {
    model: LlamaForCausalLM,
}

/// A padded batch: ids and labels `[batch, len]`, labels ignored past each sample's end.
#[derive(Clone, Debug)]
struct TokenBatch {
    input_ids: Tensor<2, Int>,
    labels: Tensor<2, Int>,
}

/// Pads samples with the tokenizer's pad id on the device burn-train asks for (the autodiff
/// device for training, the plain one for validation).
struct SampleBatcher {
    pad: u32,
}

impl Batcher<Sample, TokenBatch> for SampleBatcher {
    fn batch(&self, items: Vec<Sample>, device: &Device) -> TokenBatch {
        let refs: Vec<&Sample> = items.iter().collect();
        let (input_ids, labels, _) = collate(&refs, self.pad, device);
        TokenBatch { input_ids, labels }
    }
}

/// A step's output: the loss, which `LossMetric` reads.
struct LmOutput {
    loss: Tensor<1>,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        // Off the autodiff graph before the metric thread holds it.
        Ok(Self {
            loss: self.loss.detach(),
        })
    }
}

impl Adaptor<LossInput> for LmOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl TrainStep for CausalLmLearner {
    type Input = TokenBatch;
    type Output = LmOutput;

    fn step(&self, batch: TokenBatch) -> TrainOutput<LmOutput> {
        let loss = self.model.loss(batch.input_ids, batch.labels);
        TrainOutput::new(self, loss.backward(), LmOutput { loss })
    }
}

impl InferenceStep for CausalLmLearner {
    type Input = TokenBatch;
    type Output = LmOutput;

    fn step(&self, batch: TokenBatch) -> LmOutput {
        LmOutput {
            loss: self.model.loss(batch.input_ids, batch.labels),
        }
    }
}

fn main() {
    common::exit_on_error(run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let model_path = common::model_path(&args.model)?;
    let data_path = common::data_path(&args.data)?;
    let device = common::device(&args.device)?.autodiff();
    device.seed(args.seed);

    let tok = LlamaTokenizer::load(&model_path)?;
    let opts = args.data_args.options(args.seq_len)?;
    let (samples, _) = load_dataset(&data_path, &tok, &opts)?;
    let (train_idx, eval_idx) = split(samples.len(), 0.1, args.seed);
    let eval: Vec<Sample> = eval_idx.iter().map(|&i| samples[i].clone()).collect();
    if eval.is_empty() || train_idx.is_empty() {
        return Err(format!(
            "--data {}: {} sample(s); the learner needs two at least (one held out)",
            data_path.display(),
            samples.len()
        )
        .into());
    }
    // `--steps` batches: the training samples in shuffled passes, as many as it takes.
    let wanted = args
        .steps
        .checked_mul(args.batch_size)
        .filter(|&n| n <= 1 << 24)
        .ok_or("--steps × --batch-size: more than 2^24 samples")?;
    let mut train = Vec::with_capacity(wanted);
    for pass in 0u64.. {
        if train.len() >= wanted {
            break;
        }
        let order = permutation(train_idx.len(), args.seed.wrapping_add(pass));
        train.extend(order.iter().map(|&k| samples[train_idx[k]].clone()));
    }
    train.truncate(wanted);

    let lora = LoraConfig {
        r: args.rank,
        lora_alpha: 2.0 * args.rank as f64,
        target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: Some(model_path.display().to_string()),
        ..LoraConfig::default()
    };
    let applier = LoraApplier::new(lora.clone(), Some(QuantConfig::qlora()), &device)?;
    let model = LlamaForCausalLM::load(&model_path, &applier)?;
    let pad = tok.pad_id(model.config.vocab_size);
    for s in train.iter().chain(&eval) {
        model.check_token_ids(&s.input_ids, &data_path.display().to_string())?;
    }
    model.check_token_ids(
        &[pad],
        "the padding token (the tokenizer's pad or eos token)",
    )?;
    let before = held_out_loss(&model, &eval, pad, args.batch_size);

    let batcher = || SampleBatcher { pad };
    let train_loader = DataLoaderBuilder::new(batcher())
        .batch_size(args.batch_size)
        .build(InMemDataset::new(train));
    let valid_loader = DataLoaderBuilder::new(batcher())
        .batch_size(args.batch_size)
        .build(InMemDataset::new(eval.clone()));
    let training = SupervisedTraining::new(&args.out, train_loader, valid_loader)
        .num_epochs(1)
        .metrics((LossMetric::new(),));
    // Burn's dashboard in a terminal (`q` stops the run); its plain renderer otherwise.
    let training = if std::io::stdout().is_terminal() {
        let interrupter = training.interrupter();
        training.renderer(Box::new(TuiMetricsRendererWrapper::new(interrupter, None)))
    } else {
        training.renderer(Box::new(CliMetricsRenderer::new()))
    };
    let optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let result = training.launch(Learner::new(CausalLmLearner { model }, optim, args.lr));
    // Close the dashboard before printing.
    drop(result.renderer);
    if let Some(e) = result.error {
        return Err(format!("training failed: {e}").into());
    }
    let model = result.model.model;

    let adapter_dir = args.out.join("adapter");
    model.adapter("default", lora).save(&adapter_dir)?;
    let after = held_out_loss(&model, &eval, pad, args.batch_size);
    println!("held-out loss {before:.4} -> {after:.4}");
    println!("adapter: {}", adapter_dir.display());
    Ok(())
}
