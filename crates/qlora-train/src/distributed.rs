//! Data parallelism across processes: the [`Trainer`]'s side of a [`Collective`].
//!
//! Every process holds the whole model and reads the whole data in the same order (the same
//! seed), so that each knows every micro-batch without being sent it. It computes its share of
//! each micro-batch (the samples split as [`Trainer::set_devices`] splits them across devices,
//! the loss weighted by the share's trained tokens), then one sum per optimizer step gathers the
//! trained parameters' gradients, the loss and the token count. The summed gradients are those of
//! the micro-batches' mean loss, so the steps equal one process's on the same global batch up to
//! float reordering (dropout masks aside: each process draws its own, as each device does).
//!
//! The gradients travel flattened in one order every process agrees on: by the parameters' ids,
//! which [`qlora_nn::LoraModel::stabilize_trained_ids`] derives from their PEFT key names (a
//! hash of `base_model...q_proj.lora_A`), so they are the same in every process; the ids and
//! sizes are checked to agree before the first sum. The sum leaves the same bits everywhere, so
//! every process's optimizer takes the same step: [`Trainer::ranks_agree`] checks that at every
//! checkpoint.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use qlora_nn::CausalLm;

use crate::parallel::split_even;
use crate::trainer::held_out_sums;
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
    pub fn set_collective(&mut self, collective: Rc<dyn Collective>) -> Result<(), TrainError> {
        let size = collective.size();
        let bad = |problem: String| TrainError::Setting {
            name: "processes".into(),
            problem,
        };
        if size > 1 && self.device_count() > 1 {
            return Err(bad(
                "several devices in one process are refused under MPI: start one process per \
                 device instead"
                    .into(),
            ));
        }
        if size > self.config.batch_size {
            return Err(bad(format!(
                "{size} processes but {} samples per micro-batch: every process needs one at least",
                self.config.batch_size
            )));
        }
        self.collective = collective;
        let layout = self.layout_fingerprint();
        let all = self.collective.gather_u64(layout);
        if let Some(rank) = all.iter().position(|&h| h != all[0]) {
            return Err(bad(format!(
                "rank {rank}'s trained parameters (names or shapes) differ from rank 0's: every \
                 process must load the same model, adapter and options"
            )));
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

    /// The job's collective, for a caller that must end every process (see
    /// [`Collective::abort`]).
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Checks that every process holds the same trained parameters, bit for bit; returns their
    /// fingerprint (FNV-1a of the values in the canonical order).
    ///
    /// Errors naming the first rank that differs from rank 0.
    pub fn ranks_agree(&self) -> Result<u64, TrainError> {
        let ids = self.canonical_ids();
        let values = ParamValues::of(&self.model, &ids);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, _) in &ids {
            for v in values.get(id).into_iter().flatten() {
                for b in v.to_bits().to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        let all = self.collective.gather_u64(h);
        match all.iter().position(|&x| x != all[0]) {
            None => Ok(h),
            Some(rank) => Err(TrainError::Setting {
                name: "processes".into(),
                problem: format!(
                    "rank {rank}'s trained parameters differ from rank 0's after step {}: the \
                     processes no longer train one model",
                    self.state.step
                ),
            }),
        }
    }

    /// This process's share of `batch` and its weight (its share of the trained tokens).
    pub(crate) fn rank_share<'a>(&self, batch: &[&'a Sample]) -> (Vec<&'a Sample>, f64) {
        let order: Vec<usize> = (0..batch.len()).collect();
        let parts = split_even(&order, self.collective.size());
        let total: usize = batch.iter().map(|s| s.trained_tokens()).sum();
        let samples: Vec<&Sample> = parts[self.collective.rank()]
            .iter()
            .map(|&i| batch[i])
            .collect();
        let n: usize = samples.iter().map(|s| s.trained_tokens()).sum();
        (samples, n as f64 / total.max(1) as f64)
    }

    /// Sums the step's gradients (`ids`), loss and nothing else across the processes; every
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

    /// FNV-1a of the trained parameters' ids and shapes in the canonical order.
    fn layout_fingerprint(&self) -> u64 {
        let ids = self.canonical_ids();
        let shapes = ParamShapes::of(&self.model, &ids);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, _) in &ids {
            let words = std::iter::once(id.val()).chain(shapes[id].iter().map(|&d| d as u64));
            for w in words {
                for b in w.to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        h
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
