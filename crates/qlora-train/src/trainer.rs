//! [`Trainer`]: the QLoRA training loop over a [`LlamaForCausalLM`] whose adapters are the
//! only trainable parameters: micro-batches with gradient accumulation, clipping by global
//! norm, a learning-rate schedule, AdamW / paged AdamW / 8-bit AdamW, periodic evaluation, and
//! everything seeded so that a run resumed from a checkpoint continues exactly.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{IGNORE_INDEX, LlamaForCausalLM};
use qlora_nn::LoraConfig;
use qlora_optim::{AdamW8bit, Paged};
use serde::{Deserialize, Serialize};

use crate::trained::trained_ids;
use crate::{DataPosition, Sample, Schedule, TrainError, stabilize_adapter_ids};

/// Which optimizer updates the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// AdamW with f32 state on the device.
    AdamW,
    /// AdamW with its state paged to host memory beyond `budget` bytes of device memory.
    PagedAdamW {
        /// Device bytes of optimizer state kept resident.
        budget: usize,
    },
    /// AdamW with block-wise 8-bit state.
    AdamW8bit,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "adamw" => OptimizerKind::AdamW,
            "paged-adamw" => OptimizerKind::PagedAdamW { budget: 0 },
            "adamw8bit" => OptimizerKind::AdamW8bit,
            _ => {
                return Err(format!(
                    "unknown optimizer `{s}` (adamw, paged-adamw, adamw8bit)"
                ));
            }
        })
    }
}

/// The settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup: usize,
    /// Clip the global gradient norm to this (none: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// AdamW β₂.
    pub beta_2: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Seed of data order and dropout.
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The QLoRA recipe (paper §4 and its scripts): lr 2e-4 constant after 3 % warm-up,
    /// β₂ 0.999, no weight decay, max grad norm 0.3.
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-4,
            schedule: Schedule::Constant,
            warmup: 3,
            max_grad_norm: Some(0.3),
            optimizer: OptimizerKind::PagedAdamW { budget: usize::MAX },
            beta_2: 0.999,
            weight_decay: 0.0,
            seed: 42,
        }
    }
}

/// One optimizer step's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step number (1-based).
    pub step: usize,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed (padding excluded).
    pub tokens: usize,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
    /// Held-out loss, on steps that evaluate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
}

/// Where a run is: what a checkpoint stores besides weights and optimizer state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Position in the training data.
    pub position: DataPosition,
    /// Every step's figures so far.
    pub history: Vec<StepRecord>,
    /// Held-out loss before the first step.
    #[serde(default)]
    pub initial_eval_loss: Option<f64>,
}

/// A model, its data and its optimizer (see the module docs).
pub struct Trainer {
    /// The model on an autodiff device; only adapter parameters require gradients.
    pub model: LlamaForCausalLM,
    /// The optimizer (its state is saved with checkpoints).
    pub optim: ModuleOptimizer,
    /// The run's settings.
    pub config: TrainConfig,
    /// The adapters' config.
    pub lora: LoraConfig,
    /// Where the run is.
    pub state: TrainState,
    train: Vec<Sample>,
    eval: Vec<Sample>,
    pad_id: u32,
    adapter: String,
}

/// Pads samples to the longest: ids with `pad`, labels with [`IGNORE_INDEX`].
pub fn collate(
    samples: &[&Sample],
    pad: u32,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, usize) {
    let t = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(samples.len() * t);
    let mut labels = Vec::with_capacity(samples.len() * t);
    let mut tokens = 0;
    for s in samples {
        tokens += s.input_ids.len();
        ids.extend(s.input_ids.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad as i64, t - s.input_ids.len()));
        labels.extend(&s.labels);
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - s.labels.len()));
    }
    let b = samples.len();
    (
        Tensor::from_data(TensorData::new(ids, [b, t]), device),
        Tensor::from_data(TensorData::new(labels, [b, t]), device),
        tokens,
    )
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("f64")[0]
}

impl Trainer {
    /// A run over `train` (evaluated on `eval`) of `model`, whose adapter `adapter` is trained.
    ///
    /// Errors if the settings cannot work (no steps, a zero batch).
    pub fn new(
        mut model: LlamaForCausalLM,
        lora: LoraConfig,
        adapter: &str,
        train: Vec<Sample>,
        eval: Vec<Sample>,
        pad_id: u32,
        config: TrainConfig,
    ) -> Result<Self, TrainError> {
        let bad = |name: &str, problem: &str| TrainError::Setting {
            name: name.into(),
            problem: problem.into(),
        };
        if config.steps == 0 {
            return Err(bad("steps", "must be at least 1"));
        }
        if config.batch_size == 0 || config.grad_accum == 0 {
            return Err(bad("batch-size/grad-accum", "must be at least 1"));
        }
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(bad("lr", "must be a positive number"));
        }
        if train.is_empty() {
            return Err(bad("data", "no training sample"));
        }
        // A tokenizer of another model gives ids past the embedding table.
        let vocab = model.config.vocab_size;
        if let Some(id) = train
            .iter()
            .chain(&eval)
            .flat_map(|s| s.input_ids.iter().copied())
            .chain(std::iter::once(pad_id))
            .find(|&id| id as usize >= vocab)
        {
            return Err(bad(
                "data",
                &format!(
                    "token id {id} is past the model's vocabulary of {vocab}: the tokenizer \
                     does not belong to this model"
                ),
            ));
        }
        stabilize_adapter_ids(&mut model, adapter);
        let adamw = AdamWConfig::new()
            .with_beta_2(config.beta_2)
            .with_epsilon(1e-8)
            .with_weight_decay(config.weight_decay);
        let optim = match config.optimizer {
            OptimizerKind::AdamW => ModuleOptimizer::from(adamw.build()),
            OptimizerKind::PagedAdamW { budget } => {
                ModuleOptimizer::from(Paged::new(adamw.build(), Device::flex(), budget))
            }
            OptimizerKind::AdamW8bit => ModuleOptimizer::from(AdamW8bit {
                beta_2: config.beta_2,
                weight_decay: config.weight_decay,
                ..AdamW8bit::default()
            }),
        };
        Ok(Self {
            model,
            optim,
            config,
            lora,
            state: TrainState {
                step: 0,
                position: DataPosition { epoch: 0, index: 0 },
                history: Vec::new(),
                initial_eval_loss: None,
            },
            train,
            eval,
            pad_id,
            adapter: adapter.to_string(),
        })
    }

    /// The adapter being trained.
    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// True when every step is done.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.config.steps
    }

    /// One optimizer step: `grad_accum` micro-batches, clipping, the scheduled learning rate.
    pub fn step(&mut self) -> StepRecord {
        let started = Instant::now();
        let c = self.config.clone();
        let device = self.model.model.embed_tokens.weight.device();
        // Dropout draws depend only on the seed and the step, so a resumed run draws the same.
        device.seed(
            c.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.state.step as u64),
        );
        let mut acc = GradientsAccumulator::<LlamaForCausalLM>::new();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        for _ in 0..c.grad_accum {
            let idx = self
                .state
                .position
                .take(c.batch_size, self.train.len(), c.seed);
            let batch: Vec<&Sample> = idx.iter().map(|&i| &self.train[i]).collect();
            let (ids, labels, n) = collate(&batch, self.pad_id, &device);
            tokens += n;
            let loss = self.model.loss(ids, labels);
            let loss = loss.div_scalar(c.grad_accum as f64);
            loss_sum += scalar(loss.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            acc.accumulate(&self.model, grads);
        }
        let mut grads = acc.grads();
        let grad_norm = self.clip(&mut grads, c.max_grad_norm);
        let lr = c.schedule.lr(c.lr, self.state.step, c.steps, c.warmup);
        // `step` takes the module by value; a clone shares the tensors.
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.state.step += 1;
        let record = StepRecord {
            step: self.state.step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
            seconds: started.elapsed().as_secs_f64(),
            eval_loss: None,
        };
        self.state.history.push(record.clone());
        record
    }

    /// The global L2 norm of the trained parameters' gradients; scales them down to
    /// `max_norm` if above.
    fn clip(&self, grads: &mut GradientsParams, max_norm: Option<f64>) -> f64 {
        let ids = trained_ids(&self.model, &self.adapter);
        // Summed on the host in a fixed order (f64), so the norm, and the clipping it decides,
        // is the same in every run: a device reduction may split its work differently.
        let mut sq = 0.0f64;
        let mut add = |data: burn::tensor::TensorData| {
            let v = data.convert::<f32>();
            sq += v
                .as_slice::<f32>()
                .expect("f32 gradient")
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>();
        };
        for &(id, rank) in &ids {
            let g = match rank {
                2 => grads.get::<2>(id).map(|g| g.into_data()),
                _ => grads.get::<1>(id).map(|g| g.into_data()),
            };
            if let Some(g) = g {
                add(g);
            }
        }
        let norm = sq.sqrt();
        if let Some(max) = max_norm
            && norm > max
        {
            let scale = max / (norm + 1e-6);
            for (id, rank) in ids {
                if rank == 2 {
                    if let Some(g) = grads.remove::<2>(id) {
                        grads.register(id, g.mul_scalar(scale));
                    }
                } else if let Some(g) = grads.remove::<1>(id) {
                    grads.register(id, g.mul_scalar(scale));
                }
            }
        }
        norm
    }

    /// Mean loss per trained token over the held-out samples (dropout off, no gradients).
    pub fn eval_loss(&self) -> Option<f64> {
        if self.eval.is_empty() {
            return None;
        }
        let model = self.model.valid();
        let device = model.model.embed_tokens.weight.device();
        let (mut total, mut count) = (0.0, 0usize);
        for chunk in self.eval.chunks(self.config.batch_size.max(1)) {
            let batch: Vec<&Sample> = chunk.iter().collect();
            let n: usize = batch.iter().map(|s| s.trained_tokens()).sum();
            let (ids, labels, _) = collate(&batch, self.pad_id, &device);
            let loss = scalar(model.loss(ids, labels));
            total += loss * n as f64;
            count += n;
        }
        Some(total / count.max(1) as f64)
    }

    /// Records `eval` as the held-out loss of the last step.
    pub fn record_eval(&mut self, eval: f64) {
        if let Some(last) = self.state.history.last_mut() {
            last.eval_loss = Some(eval);
        }
    }

    /// Training and held-out samples.
    pub fn data(&self) -> (&[Sample], &[Sample]) {
        (&self.train, &self.eval)
    }
}
