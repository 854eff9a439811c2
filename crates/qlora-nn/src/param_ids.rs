//! Stable ids for the trained parameters ([`LoraModel::stabilize_trained_ids`]), so that
//! optimizer state saved under them is found again after the model is rebuilt (a resumed run,
//! data-parallel replicas).

use burn::module::{Param, ParamId};
use burn::tensor::Tensor;

use crate::{AdaptedLinear, LoraModel};

/// FNV-1a of a path: the stable ids here, and PiSSA's per-layer random start.
pub(crate) fn fnv1a(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A stable id for a trained parameter, from its path.
fn stable_id(path: &str) -> ParamId {
    ParamId::from(fnv1a(path) >> 1)
}

/// See [`LoraModel::stabilize_trained_ids`].
pub(crate) fn stabilize_trained_ids<M: LoraModel>(model: &mut M, name: &str) {
    fn stable<const D: usize>(p: &mut Param<Tensor<D>>, path: &str) {
        *p = Param::initialized(stable_id(path), p.val());
    }
    for (path, layer) in model.linears_mut() {
        if let Some(a) = layer.adapters_mut().and_then(|a| a.get_mut(name)) {
            stable(&mut a.lora_a, &format!("{path}.lora_A"));
            stable(&mut a.lora_b, &format!("{path}.lora_B"));
            if let Some(m) = &mut a.magnitude {
                stable(m, &format!("{path}.lora_magnitude_vector"));
            }
        }
        if let AdaptedLinear::Trained(l) = layer {
            stable(&mut l.weight, &format!("{path}.weight"));
            if let Some(b) = &mut l.bias {
                stable(b, &format!("{path}.bias"));
            }
        }
    }
    for (path, t) in model.tables_mut() {
        if t.is_require_grad() {
            stable(t, &path);
        }
    }
    for (path, _, t) in model.token_tables_mut() {
        if let Some(t) = t.get_mut(name) {
            stable(
                &mut t.delta,
                &format!("{path}.token_adapter.trainable_tokens_delta"),
            );
        }
    }
}

/// See [`LoraModel::trained_param_ids`].
pub(crate) fn trained_param_ids<M: LoraModel>(model: &M, name: &str) -> Vec<(ParamId, usize)> {
    let mut ids = Vec::new();
    for (_, l) in model.linears() {
        if let Some(a) = l.adapter(name) {
            ids.extend([(a.lora_a.id, 2), (a.lora_b.id, 2)]);
            ids.extend(a.magnitude.as_ref().map(|m| (m.id, 1)));
        }
        if let AdaptedLinear::Trained(l) = l {
            ids.push((l.weight.id, 2));
            ids.extend(l.bias.as_ref().map(|b| (b.id, 1)));
        }
    }
    for (_, t) in model.tables() {
        if t.is_require_grad() {
            ids.push((t.id, 2));
        }
    }
    for (_, _, t) in model.token_tables() {
        if let Some(t) = t.get(name) {
            ids.push((t.delta.id, 2));
        }
    }
    ids
}
