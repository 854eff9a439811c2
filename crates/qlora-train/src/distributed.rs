//! Data parallelism across processes: the [`Trainer`]'s side of a [`Collective`].
//!
//! Every process holds the whole model and reads the whole data in the same order (the same
//! seed), so that each knows every micro-batch without being sent it. It computes its share of
//! each micro-batch (the samples split as [`Trainer::set_devices`] splits them across devices,
//! the loss weighted by the share's trained tokens, the dropout masks those one process would
//! draw on the same rows: every process seeds alike and shifts its seeds to where its rows
//! start, [`qlora_nn::with_dropout_row_offset`]; exact where the micro-batch needs no padding,
//! as padding-free batches never do), then one sum per optimizer step gathers the
//! trained parameters' gradients and the loss (every process counts the whole micro-batch's
//! tokens itself, and the gradient norm is taken of the summed gradients, so the logs are the
//! job's). The summed gradients are those of
//! the micro-batches' mean loss, so the steps equal one process's on the same global batch up to
//! float reordering.
//!
//! The gradients travel flattened in one order every process agrees on: by the parameters' ids,
//! which [`qlora_nn::LoraModel::stabilize_trained_ids`] derives from their PEFT key names (a
//! hash of `base_model...q_proj.lora_A`), so they are the same in every process; the ids and
//! sizes are checked to agree before the first sum. The sum leaves the same bits everywhere, so
//! every process's optimizer takes the same step. [`Trainer::ranks_agree`] checks that the
//! processes run one run (parameters bit for bit, step, data position, settings, data sizes)
//! when the collective is set, when `fit` starts (after a resume) and at every checkpoint: ranks
//! that differ would make different collective calls, which hangs or mixes sums, so they are a
//! named error instead.

/// Why `set_devices` is refused under several processes.
pub(crate) const ONE_DEVICE_PER_PROCESS: &str =
    "several devices in one process are refused under MPI: start one process per device instead";

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use qlora_nn::CausalLm;

use crate::batch::held_out_sums;
use crate::parallel::{share, split_even};
use crate::{Collective, Sample, TrainError, Trainer};

/// What one step's sum across processes gave.
pub(crate) struct Summed {
    /// The micro-batches' mean loss (the processes' shares summed).
    pub loss: f64,
    /// Gradient bytes this process sent into the sum.
    pub bytes: u64,
    /// Seconds spent in the sums.
    pub seconds: f64,
}

impl<M: CausalLm> Trainer<M> {
    /// Trains as one process of a job (see the module docs): `collective` says which process this
    /// is and sums across them (shared, so that the caller can still end the job with
    /// [`Collective::abort`] after an error). With one process it changes nothing.
    ///
    /// Errors if several devices were set (one process per device under a job), if a
    /// micro-batch has fewer samples than the job has processes, or if the processes' trained
    /// parameters differ (another model, adapter or config on some rank).
    pub fn set_collective(&mut self, collective: Arc<dyn Collective>) -> Result<(), TrainError> {
        let size = collective.size();
        let bad = |problem: String| TrainError::Setting {
            name: "processes".into(),
            problem,
        };
        if size > 1 && self.device_count() > 1 {
            return Err(bad(ONE_DEVICE_PER_PROCESS.into()));
        }
        if size > self.config.batch_size {
            return Err(bad(format!(
                "{size} processes but {} samples per micro-batch: every process needs one at least",
                self.config.batch_size
            )));
        }
        let previous = std::mem::replace(&mut self.collective, collective);
        if let Err(e) = self.ranks_agree() {
            self.collective = previous;
            return Err(e);
        }
        Ok(())
    }

    /// This process's index in the job (0 alone) and the job's process count (1 alone).
    pub fn rank_and_size(&self) -> (usize, usize) {
        (self.collective.rank(), self.collective.size())
    }

    /// Whether this process writes the run's files (rank 0, or the one process).
    pub fn is_main_process(&self) -> bool {
        self.collective.is_main()
    }

    /// Checks that every process runs the same run: the same trained parameters bit for bit
    /// (names, shapes, values), step, data position, settings and data sizes; returns the
    /// fingerprint they share. Every process must call it (it is a collective call).
    ///
    /// Errors naming the first rank that differs from rank 0.
    pub fn ranks_agree(&self) -> Result<u64, TrainError> {
        self.ranks_agree_with(&[])
    }

    /// [`Trainer::ranks_agree`], with `extra` words that must agree too (a caller's settings).
    pub(crate) fn ranks_agree_with(&self, extra: &[u64]) -> Result<u64, TrainError> {
        let ids = self.canonical_ids();
        let shapes = ParamShapes::of(&self.model, &ids);
        let values = ParamValues::of(&self.model, &ids);
        let c = &self.config;
        let mut h = Fnv::new();
        h.words(&[
            self.state.step as u64,
            self.state.position.epoch as u64,
            self.state.position.index as u64,
            c.steps as u64,
            c.batch_size as u64,
            c.grad_accum as u64,
            c.seed,
            c.lr.to_bits(),
            u64::from(c.padding_free),
            self.data().0.len() as u64,
            self.eval.len() as u64,
        ]);
        h.words(extra);
        for (id, _) in &ids {
            h.words(&[id.val()]);
            h.words(&shapes[id].iter().map(|&d| d as u64).collect::<Vec<_>>());
            for v in values.get(id).into_iter().flatten() {
                h.bytes(&v.to_bits().to_le_bytes());
            }
        }
        let all = self.collective.gather_u64(h.0);
        match all.iter().position(|&x| x != all[0]) {
            None => Ok(h.0),
            Some(rank) => Err(TrainError::Setting {
                name: "processes".into(),
                problem: format!(
                    "rank {rank} does not run the same run as rank 0 at step {} (trained \
                     parameters, step, data position, settings or data differ): every process \
                     must load the same model, adapter, data, options and checkpoint",
                    self.state.step
                ),
            }),
        }
    }

    /// This process's share of `batch`, its weight (its share of the trained tokens) and the
    /// batch's tokens before it (where its rows start in the whole micro-batch).
    pub(crate) fn rank_share<'a>(&self, batch: &[&'a Sample]) -> (Vec<&'a Sample>, f64, usize) {
        let order: Vec<usize> = (0..batch.len()).collect();
        let parts = split_even(&order, self.collective.size());
        let rank = self.collective.rank();
        let before = parts[..rank]
            .iter()
            .flat_map(|p| p.iter())
            .map(|&i| batch[i].input_ids.len())
            .sum();
        let (samples, weight) = share(batch, parts[rank]);
        (samples, weight, before)
    }

    /// Sums the step's gradients (`ids`) and loss across the processes; every
    /// process then holds the same `grads`. A parameter that no process has a gradient for
    /// stays without one, as in one process.
    pub(crate) fn all_reduce(
        &self,
        grads: &mut GradientsParams,
        ids: &[(ParamId, usize)],
        loss: f64,
    ) -> Summed {
        let ids = canonical(ids);
        let shapes = ParamShapes::of(&self.model, &ids);
        // Registered back where the gradients were (the model's device, as `set_devices`'s are).
        let mut device = self.model.device();
        let mut flat = Vec::new();
        let mut present = Vec::with_capacity(ids.len());
        for &(id, rank) in &ids {
            let numel: usize = shapes[&id].iter().product();
            let g = match rank {
                2 => grads.remove::<2>(id).map(|g| {
                    device = g.device();
                    g.into_data()
                }),
                _ => grads.remove::<1>(id).map(|g| {
                    device = g.device();
                    g.into_data()
                }),
            };
            match g {
                Some(g) => {
                    flat.extend_from_slice(g.convert::<f32>().as_slice::<f32>().expect("f32"));
                    present.push(1.0f32);
                }
                None => {
                    flat.resize(flat.len() + numel, 0.0);
                    present.push(0.0);
                }
            }
        }
        let bytes = (flat.len() * 4) as u64;
        flat.extend_from_slice(&present);
        let started = Instant::now();
        self.collective.sum_f32(&mut flat);
        let mut scalars = [loss];
        self.collective.sum_f64(&mut scalars);
        let seconds = started.elapsed().as_secs_f64();
        let mut at = 0;
        for (k, &(id, rank)) in ids.iter().enumerate() {
            let shape = shapes[&id].clone();
            let numel: usize = shape.iter().product();
            let values = flat[at..at + numel].to_vec();
            at += numel;
            if flat[flat.len() - ids.len() + k] == 0.0 {
                continue;
            }
            let data = TensorData::new(values, shape);
            match rank {
                2 => grads.register(id, Tensor::<2>::from_data(data, &device)),
                _ => grads.register(id, Tensor::<1>::from_data(data, &device)),
            }
        }
        Summed {
            loss: scalars[0],
            bytes,
            seconds,
        }
    }

    /// The held-out loss with every process evaluating its own chunks of the held-out samples,
    /// the sums added across processes.
    pub(crate) fn held_out_loss_shared(&self) -> f64 {
        let (rank, size) = self.rank_and_size();
        let (total, count) = held_out_sums(
            &self.model,
            &self.eval,
            self.pad_id,
            self.config.batch_size,
            |i| i % size == rank,
        );
        let mut sums = [total, count];
        self.collective.sum_f64(&mut sums);
        sums[0] / sums[1].max(1.0)
    }

    /// The trained parameters in the canonical order.
    fn canonical_ids(&self) -> Vec<(ParamId, usize)> {
        canonical(&self.model.trained_param_ids(self.adapter_name()))
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn words(&mut self, words: &[u64]) {
        for w in words {
            self.bytes(&w.to_le_bytes());
        }
    }
}

/// `ids` sorted by id value: the same order in every process (see the module docs).
fn canonical(ids: &[(ParamId, usize)]) -> Vec<(ParamId, usize)> {
    let mut ids = ids.to_vec();
    ids.sort_by_key(|(id, _)| id.val());
    ids
}

/// The shapes of the parameters in a list.
struct ParamShapes<'a> {
    ids: &'a [(ParamId, usize)],
    shapes: HashMap<ParamId, Vec<usize>>,
}

impl<'a> ParamShapes<'a> {
    fn of<M: CausalLm>(model: &M, ids: &'a [(ParamId, usize)]) -> HashMap<ParamId, Vec<usize>> {
        let mut v = Self {
            ids,
            shapes: HashMap::new(),
        };
        model.visit(&mut v);
        v.shapes
    }
}

impl ModuleVisitor for ParamShapes<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.iter().any(|(id, _)| *id == param.id) {
            self.shapes.insert(param.id, param.val().dims().to_vec());
        }
    }
}

/// The values of the parameters in a list, as f32.
struct ParamValues<'a> {
    ids: &'a [(ParamId, usize)],
    values: HashMap<ParamId, Vec<f32>>,
}

impl<'a> ParamValues<'a> {
    fn of<M: CausalLm>(model: &M, ids: &'a [(ParamId, usize)]) -> HashMap<ParamId, Vec<f32>> {
        let mut v = Self {
            ids,
            values: HashMap::new(),
        };
        model.visit(&mut v);
        v.values
    }
}

impl ModuleVisitor for ParamValues<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.iter().any(|(id, _)| *id == param.id) {
            let data = param.val().into_data().convert::<f32>();
            self.values
                .insert(param.id, data.try_to_vec::<f32>().expect("f32 values"));
        }
    }
}
