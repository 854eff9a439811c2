//! [`Trainer`]: the QLoRA training loop over any [`CausalLm`] whose adapters (and
//! `modules_to_save`) are the only trainable parameters: micro-batches with gradient accumulation, clipping by global
//! norm, a learning-rate schedule, AdamW / paged AdamW / 8-bit AdamW, periodic evaluation, and
//! everything seeded so that a run resumed from a checkpoint continues exactly.

use std::sync::Arc;
use std::time::Instant;

use burn::module::ParamId;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use qlora_nn::{CausalLm, LoraConfig};
use qlora_optim::{AdamW8bitConfig, PagedConfig};
use serde::{Deserialize, Serialize};

use crate::batch::held_out_loss;
use crate::parallel::shard_step;
use crate::{
    Collective, DataPosition, Replicas, Sample, Schedule, SingleProcess, TrainError, Transfer,
};

/// Which optimizer updates the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// AdamW with f32 state on the device.
    #[serde(rename = "adamw")]
    AdamW,
    /// AdamW with its state paged to host memory beyond `budget` bytes of device memory.
    #[serde(rename = "paged-adamw")]
    PagedAdamW {
        /// Device bytes of optimizer state kept resident.
        budget: usize,
    },
    /// AdamW with block-wise 8-bit state.
    #[serde(rename = "adamw8bit")]
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

/// The settings of a run, a Burn [`Config`](burn::config::Config) (`TrainConfig::new()`,
/// `with_*`, JSON `save`/`load`). The defaults are the QLoRA recipe (paper §4 and its
/// scripts): lr 2e-4 constant after 3 warm-up steps, β₂ 0.999, no weight decay, max grad norm
/// 0.3, paged AdamW.
#[derive(burn::config::Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// Optimizer steps.
    #[config(default = 100)]
    pub steps: usize,
    /// Samples per micro-batch.
    #[config(default = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[config(default = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[config(default = 2e-4)]
    pub lr: f64,
    /// Learning-rate schedule.
    #[config(default = "Schedule::Constant")]
    pub schedule: Schedule,
    /// Warm-up steps.
    #[config(default = 3)]
    pub warmup: usize,
    /// Clip the global gradient norm to this (none: no clipping).
    #[config(default = "Some(0.3)")]
    pub max_grad_norm: Option<f64>,
    /// Optimizer.
    #[config(default = "OptimizerKind::PagedAdamW { budget: usize::MAX }")]
    pub optimizer: OptimizerKind,
    /// AdamW β₂.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Decoupled weight decay.
    #[config(default = 0.0)]
    pub weight_decay: f32,
    /// Seed of data order and dropout.
    #[config(default = 42)]
    pub seed: u64,
    /// Padding-free batches (TRL's `padding_free`): a micro-batch whose samples differ in
    /// length is computed as their concatenation, with no padding, positions restarting per
    /// sample and attention kept inside each ([`PaddingFreeBatch`]), where the model can
    /// ([`CausalLm::loss_padding_free`]); the same mean loss over the same targets as padding.
    #[config(default = true)]
    pub padding_free: bool,
}

impl Default for TrainConfig {
    /// [`TrainConfig::new`]: the QLoRA recipe.
    fn default() -> Self {
        Self::new()
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
    /// Bytes moved between devices (trained gradients and weights) with several devices, or
    /// the gradient bytes each process all-reduced with several processes.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub transfer_bytes: u64,
    /// Seconds this process spent in the step's collective sums (several processes only).
    #[serde(skip_serializing_if = "is_zero_f64", default)]
    pub comm_seconds: f64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
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
pub struct Trainer<M: CausalLm> {
    /// The model on an autodiff device; only adapter parameters require gradients.
    pub model: M,
    /// The optimizer (its state is saved with checkpoints).
    pub optim: ModuleOptimizer,
    /// The run's settings.
    pub config: TrainConfig,
    /// The adapters' config.
    pub lora: LoraConfig,
    /// Where the run is.
    pub state: TrainState,
    train: Vec<Sample>,
    pub(crate) eval: Vec<Sample>,
    pub(crate) pad_id: u32,
    adapter: String,
    replicas: Option<Replicas<M>>,
    pub(crate) collective: Arc<dyn Collective>,
}

impl<M: CausalLm> Trainer<M> {
    /// A run over `train` (evaluated on `eval`) of `model`, whose adapter `adapter` is trained.
    ///
    /// Errors if the settings cannot work (no steps, a zero batch).
    pub fn new(
        mut model: M,
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
        let vocab = model.vocab_size();
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
        model.stabilize_trained_ids(adapter);
        let adamw = AdamWConfig::new()
            .with_beta_2(config.beta_2)
            .with_epsilon(1e-8)
            .with_weight_decay(config.weight_decay);
        let optim = match config.optimizer {
            OptimizerKind::AdamW => ModuleOptimizer::from(adamw.build()),
            OptimizerKind::PagedAdamW { budget } => PagedConfig::new()
                .with_budget(budget)
                .init(adamw.build(), Device::flex()),
            OptimizerKind::AdamW8bit => AdamW8bitConfig::new()
                .with_beta_2(config.beta_2)
                .with_weight_decay(config.weight_decay)
                .init(),
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
            replicas: None,
            collective: Arc::new(SingleProcess),
        })
    }

    /// Trains data-parallel on `devices` (the first must be the model's device): a replica of
    /// the model on each other device, every micro-batch split across them (see
    /// [`Replicas`]). The results equal a one-device run of the same batch up to float
    /// rounding; dropout masks differ, as each device draws its own. Errors if the list is
    /// empty, names a device twice, does not start with the model's device, or has more
    /// devices than a micro-batch has samples.
    pub fn set_devices(&mut self, devices: &[Device]) -> Result<(), TrainError> {
        if devices.len() > 1 && self.collective.size() > 1 {
            return Err(TrainError::Setting {
                name: "devices".into(),
                problem: crate::distributed::ONE_DEVICE_PER_PROCESS.into(),
            });
        }
        if devices.len() > self.config.batch_size {
            return Err(TrainError::Setting {
                name: "devices".into(),
                problem: format!(
                    "{} devices but {} samples per micro-batch: every device needs one at least",
                    devices.len(),
                    self.config.batch_size
                ),
            });
        }
        self.replicas = match devices.len() {
            1 => {
                Replicas::new(&self.model, devices)?;
                None
            }
            _ => Some(Replicas::new(&self.model, devices)?),
        };
        Ok(())
    }

    /// The devices trained on: 1, or the replicas' count.
    pub fn device_count(&self) -> usize {
        self.replicas.as_ref().map_or(1, Replicas::len)
    }

    /// Bytes moved between devices in the last step (zero on one device).
    pub fn last_transfer(&self) -> Transfer {
        self.replicas.as_ref().map(|r| r.last).unwrap_or_default()
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
    ///
    /// A failure on the device (out of memory, a lost device: the runtime panics) is caught
    /// and returned as [`TrainError::Step`]; the step count and the data position are then as
    /// they were before the step. The weights and optimizer state may not be (an update may
    /// have failed half-way, and a lazy device reports a failed kernel only at a later sync):
    /// after such an error, resume from the last checkpoint.
    pub fn step(&mut self) -> Result<StepRecord, TrainError> {
        let position = self.state.position;
        let step = self.state.step + 1;
        catch_device_failure(step, || self.run_step()).inspect_err(|_| {
            self.state.position = position;
        })
    }

    fn run_step(&mut self) -> StepRecord {
        let started = Instant::now();
        let c = self.config.clone();
        let device = self.model.device();
        // Dropout draws depend only on the seed and the step, so a resumed run draws the same.
        let seed = c
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.state.step as u64);
        // Every process draws the same seeds, each shifted to its rows (`distributed.rs`).
        device.seed(seed);
        let ids = self.model.trained_param_ids(&self.adapter);
        let mut transfer = Transfer::default();
        if let Some(r) = &mut self.replicas {
            // The replicas start every step from the main model's trained parameters (which
            // also covers a resume: only the main model is checkpointed).
            let pids: Vec<_> = ids.iter().map(|&(id, _)| id).collect();
            transfer.weight_bytes = r.sync_from(&self.model, &pids);
            r.seed(seed);
        }
        let mut acc = GradientsAccumulator::<M>::new();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        for _ in 0..c.grad_accum {
            let idx = self
                .state
                .position
                .take(c.batch_size, self.train.len(), c.seed);
            let batch: Vec<&Sample> = idx.iter().map(|&i| &self.train[i]).collect();
            tokens += batch.iter().map(|s| s.input_ids.len()).sum::<usize>();
            match &self.replicas {
                None if self.collective.size() > 1 => {
                    // This process's share of the micro-batch (see `distributed.rs`).
                    let (part, weight, rows_before) = self.rank_share(&batch);
                    if weight > 0.0 {
                        let (loss, grads) = shard_step(
                            &self.model,
                            &part,
                            (self.pad_id, c.padding_free),
                            weight,
                            c.grad_accum,
                            rows_before,
                        );
                        loss_sum += loss;
                        acc.accumulate(&self.model, grads);
                    }
                }
                None => {
                    let (loss, grads) = shard_step(
                        &self.model,
                        &batch,
                        (self.pad_id, c.padding_free),
                        1.0,
                        c.grad_accum,
                        0,
                    );
                    loss_sum += loss;
                    acc.accumulate(&self.model, grads);
                }
                Some(r) => {
                    let (loss, grads, bytes) = r.micro_batch(
                        &self.model,
                        &batch,
                        (self.pad_id, c.padding_free),
                        c.grad_accum,
                        &ids,
                    );
                    loss_sum += loss;
                    transfer.gradient_bytes += bytes;
                    for g in grads {
                        acc.accumulate(&self.model, g);
                    }
                }
            }
        }
        if let Some(r) = &mut self.replicas {
            r.last = transfer;
        }
        let mut grads = acc.grads();
        let mut comm_seconds = 0.0;
        if self.collective.size() > 1 {
            let summed = self.all_reduce(&mut grads, &ids, loss_sum);
            loss_sum = summed.loss;
            transfer.gradient_bytes = summed.bytes;
            comm_seconds = summed.seconds;
        }
        let grad_norm = self.clip(&mut grads, &ids, c.max_grad_norm);
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
            transfer_bytes: transfer.gradient_bytes + transfer.weight_bytes,
            comm_seconds,
        };
        self.state.history.push(record.clone());
        record
    }

    /// The global L2 norm of the trained parameters' gradients; scales them down to
    /// `max_norm` if above.
    fn clip(
        &self,
        grads: &mut GradientsParams,
        ids: &[(ParamId, usize)],
        max_norm: Option<f64>,
    ) -> f64 {
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
        for &(id, rank) in ids {
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
            for &(id, rank) in ids {
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

    /// Mean loss per trained token over the held-out samples (dropout off, no gradients);
    /// none without held-out samples. A failure on the device is [`TrainError::Eval`].
    pub fn eval_loss(&self) -> Result<Option<f64>, TrainError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        catch_device_failure(self.state.step, || self.run_eval())
            .map(Some)
            .map_err(|e| match e {
                TrainError::Step {
                    step,
                    message,
                    out_of_memory,
                } => TrainError::Eval {
                    step,
                    message,
                    out_of_memory,
                },
                e => e,
            })
    }

    fn run_eval(&self) -> f64 {
        if self.collective.size() > 1 {
            return self.held_out_loss_shared();
        }
        held_out_loss(&self.model, &self.eval, self.pad_id, self.config.batch_size)
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

/// Runs `f`, turning a panic (how Burn's runtimes report a device that ran out of memory or
/// failed) into [`TrainError::Step`] for step `step`.
fn catch_device_failure<T>(step: usize, f: impl FnOnce() -> T) -> Result<T, TrainError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown error")
            .to_string();
        TrainError::Step {
            step,
            out_of_memory: is_out_of_memory(&message),
            message,
        }
    })
}

/// Whether a device's error message says that memory ran out (CubeCL, wgpu and CUDA word it
/// in these ways).
fn is_out_of_memory(what: &str) -> bool {
    let w = what.to_ascii_lowercase();
    [
        "out of memory",
        "outofmemory",
        "out_of_memory",
        "alloc",
        "buffer size",
        "max_buffer",
        "too large",
        "exceeds",
    ]
    .iter()
    .any(|k| w.contains(k))
}
