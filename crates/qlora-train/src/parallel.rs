//! Data parallelism: one model replica per device, each micro-batch split across them, the
//! trained parameters' gradients gathered on the main device and summed there, one optimizer
//! step there, and the updated trained parameters sent back to the replicas.
//!
//! This is Burn's multi-device strategy with the optimizer on the main device
//! (burn-train's `ExecutionStrategy::MultiDevice(_, MultiDeviceOptim::OptimMainDevice)`:
//! gradients moved with `Tensor::to_device` and summed), written into our trainer because the
//! QLoRA loop keeps its own checkpoints, clipping and paged optimizer. Each replica keeps its
//! own copy of the frozen NF4 base, uploaded once; per step only the trained parameters travel
//! (their gradients to the main device, their new values back), which [`Transfer`] counts.
//!
//! The loss of a replica is the sum over its trained tokens divided by the micro-batch's
//! trained tokens, so that the summed gradients are exactly those of the micro-batch's mean
//! loss: the same effective batch and loss scale as one device running the whole batch.

use std::collections::HashMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use qlora_nn::CausalLm;

use crate::batch::{batch_loss, scalar};
use crate::{Sample, TrainError};

/// Bytes moved between devices in one optimizer step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Trained parameters' gradients sent from the replicas to the main device.
    pub gradient_bytes: u64,
    /// Trained parameters' values sent from the main device to the replicas.
    pub weight_bytes: u64,
}

/// The model replicas on the devices other than the main one (see the module docs).
pub struct Replicas<M> {
    /// `(device, replica)` for every device but the main one.
    pub(crate) others: Vec<(Device, M)>,
    /// Bytes moved in the last step.
    pub last: Transfer,
}

impl<M: CausalLm> Replicas<M> {
    /// Copies `main` (on `devices[0]`) to every other device. Errors if the list is empty,
    /// names a device twice, or does not start with the model's device.
    pub fn new(main: &M, devices: &[Device]) -> Result<Self, TrainError> {
        let bad = |problem: String| TrainError::Setting {
            name: "devices".into(),
            problem,
        };
        let Some(first) = devices.first() else {
            return Err(bad("no device given".into()));
        };
        let main_device = main.device();
        if *first != main_device {
            return Err(bad(format!(
                "the first device ({first:?}) must be the model's device ({main_device:?})"
            )));
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(bad(format!("{d:?} is listed twice")));
            }
        }
        let others = devices[1..]
            .iter()
            .map(|d| {
                // The replicas differentiate as the main model does (checkpointing included).
                let d = d.clone().with_autodiff_context_from(&main_device);
                (d.clone(), main.clone().fork(&d))
            })
            .collect();
        Ok(Self {
            others,
            last: Transfer::default(),
        })
    }

    /// The number of devices, the main one included.
    pub fn len(&self) -> usize {
        self.others.len() + 1
    }

    /// Always false: there is the main device at least.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Sets every replica's trained parameters (`ids`) to the main model's values; returns the
    /// bytes sent.
    pub(crate) fn sync_from(&mut self, main: &M, ids: &[ParamId]) -> u64 {
        let mut collect = Collect {
            ids,
            values: HashMap::new(),
        };
        main.visit(&mut collect);
        let mut bytes = 0;
        for (device, replica) in &mut self.others {
            let mut set = SetFrom {
                values: &collect.values,
                device,
                bytes: 0,
            };
            *replica = replica.clone().map(&mut set);
            bytes += set.bytes;
        }
        bytes
    }
}

/// One device's share of a micro-batch: its loss times `weight` (its share of the trained
/// tokens), divided by `grad_accum`; returns that loss's value and its gradients. Its dropout
/// masks are those of rows `rows_before..` of the whole micro-batch's tokens
/// ([`qlora_nn::with_dropout_row_offset`]; 0: the share draws its own).
pub(crate) fn shard_step<M: CausalLm>(
    model: &M,
    batch: &[&Sample],
    (pad, padding_free): (u32, bool),
    weight: f64,
    grad_accum: usize,
    rows_before: usize,
) -> (f64, GradientsParams) {
    qlora_nn::with_dropout_row_offset(rows_before, || {
        let mut loss = batch_loss(model, batch, pad, padding_free);
        if weight != 1.0 {
            loss = loss.mul_scalar(weight);
        }
        let loss = loss.div_scalar(grad_accum as f64);
        let value = scalar(loss.clone());
        (value, GradientsParams::from_grads(loss.backward(), model))
    })
}

impl<M: CausalLm> Replicas<M> {
    /// Seeds every replica's device for a step (`seed` is the main device's seed of the step):
    /// each device draws its own dropout masks.
    pub(crate) fn seed(&self, seed: u64) {
        for (k, (device, _)) in self.others.iter().enumerate() {
            device.seed(seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k as u64 + 1)));
        }
    }

    /// Runs one micro-batch split across the devices, all at once (a thread per replica):
    /// returns the micro-batch's loss divided by `grad_accum`, every device's gradients of the
    /// trained parameters `ids` on the main device, and the gradient bytes moved there.
    ///
    /// A panic on a device (out of memory, a lost device) is raised again here.
    pub(crate) fn micro_batch(
        &self,
        main: &M,
        batch: &[&Sample],
        (pad, padding_free): (u32, bool),
        grad_accum: usize,
        ids: &[(ParamId, usize)],
    ) -> (f64, Vec<GradientsParams>, u64) {
        let order: Vec<usize> = (0..batch.len()).collect();
        let parts = split_even(&order, self.len());
        let share = |part: &[usize]| share(batch, part);
        let main_device = main.device();
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .others
                .iter()
                .zip(&parts[1..])
                .filter_map(|((_, replica), part)| {
                    let (samples, weight) = share(part);
                    (weight > 0.0).then(|| {
                        let replica = replica.clone();
                        scope.spawn(move || {
                            shard_step(
                                &replica,
                                &samples,
                                (pad, padding_free),
                                weight,
                                grad_accum,
                                0,
                            )
                        })
                    })
                })
                .collect();
            let (samples, weight) = share(parts[0]);
            let mut loss = 0.0;
            let mut grads = Vec::with_capacity(self.len());
            if weight > 0.0 {
                let (l, g) = shard_step(main, &samples, (pad, padding_free), weight, grad_accum, 0);
                loss += l;
                grads.push(g);
            }
            let mut bytes = 0;
            for h in handles {
                let (l, mut g) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                loss += l;
                let mut moved = GradientsParams::new();
                for &(id, rank) in ids {
                    bytes += match rank {
                        2 => move_grad::<2>(&mut g, &mut moved, id, &main_device),
                        _ => move_grad::<1>(&mut g, &mut moved, id, &main_device),
                    };
                }
                grads.push(moved);
            }
            (loss, grads, bytes)
        })
    }
}

/// Moves gradient `id` (if any) from `from` to `to` on `device`; returns its bytes.
fn move_grad<const D: usize>(
    from: &mut GradientsParams,
    to: &mut GradientsParams,
    id: ParamId,
    device: &Device,
) -> u64 {
    let Some(g) = from.remove::<D>(id) else {
        return 0;
    };
    let bytes = (g.shape().num_elements() * g.dtype().size()) as u64;
    to.register(id, g.to_device(device));
    bytes
}

/// The samples of `batch` at `part` and their weight: their share of the batch's trained
/// tokens (what one device's or one process's loss is multiplied by).
pub(crate) fn share<'a>(batch: &[&'a Sample], part: &[usize]) -> (Vec<&'a Sample>, f64) {
    let total: usize = batch.iter().map(|s| s.trained_tokens()).sum();
    let samples: Vec<&Sample> = part.iter().map(|&i| batch[i]).collect();
    let n: usize = samples.iter().map(|s| s.trained_tokens()).sum();
    (samples, n as f64 / total.max(1) as f64)
}

/// Splits `idx` into `n` contiguous parts whose sizes differ by one at most (the first ones
/// larger); parts may be empty when `idx` has fewer than `n` entries.
pub(crate) fn split_even(idx: &[usize], n: usize) -> Vec<&[usize]> {
    let (q, r) = (idx.len() / n, idx.len() % n);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for k in 0..n {
        let len = q + usize::from(k < r);
        out.push(&idx[start..start + len]);
        start += len;
    }
    out
}

/// Collects the values of the parameters in `ids`, flattened.
struct Collect<'a> {
    ids: &'a [ParamId],
    values: HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id) {
            let t = param.val();
            let n = t.shape().num_elements();
            self.values.insert(param.id, t.detach().reshape([n]));
        }
    }
}

/// Replaces the parameters found in `values` by those values moved to `device`, keeping
/// whether each requires a gradient.
struct SetFrom<'a> {
    values: &'a HashMap<ParamId, Tensor<1>>,
    device: &'a Device,
    bytes: u64,
}

impl ModuleMapper for SetFrom<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(v) = self.values.get(&param.id) else {
            return param;
        };
        let (id, old, mapper) = param.consume();
        let shape = old.shape();
        self.bytes += (shape.num_elements() * v.dtype().size()) as u64;
        // A leaf on the replica's device, tracked as the parameter it replaces.
        let mut t: Tensor<D> = v.clone().to_device(self.device).reshape(shape).detach();
        if old.is_require_grad() {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::split_even;

    #[test]
    fn split_is_contiguous_and_even() {
        let idx: Vec<usize> = (0..7).collect();
        let parts = split_even(&idx, 3);
        assert_eq!(parts, vec![&[0, 1, 2][..], &[3, 4][..], &[5, 6][..]]);
        let parts = split_even(&idx[..1], 2);
        assert_eq!(parts, vec![&[0][..], &[][..]]);
        assert_eq!(split_even(&idx, 1), vec![&idx[..]]);
    }
}
