//! Which parameters a run trains, and ids for them that survive rebuilding the model: the
//! adapter's `lora_A` / `lora_B` and the modules trained in full (`modules_to_save`).

use burn::module::{Param, ParamId};
use burn::tensor::Tensor;
use qlora_llama::LlamaForCausalLM;
use qlora_nn::AdaptedLinear;

/// A stable id for an adapter parameter, from its module path (so that optimizer state saved
/// under it is found again after the model is rebuilt).
fn stable_id(path: &str) -> ParamId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    ParamId::from(h >> 1)
}

/// Gives every trained parameter an id derived from its path: those of adapter `name`, and
/// those of the modules trained in full (`modules_to_save`).
pub fn stabilize_adapter_ids(model: &mut LlamaForCausalLM, name: &str) {
    fn stable<const D: usize>(p: &mut Param<Tensor<D>>, path: &str) {
        *p = Param::initialized(stable_id(path), p.val());
    }
    for (path, layer) in model.linears_mut() {
        if let Some(a) = layer.adapters_mut().and_then(|a| a.get_mut(name)) {
            stable(&mut a.lora_a, &format!("{path}.lora_A"));
            stable(&mut a.lora_b, &format!("{path}.lora_B"));
        }
        if let AdaptedLinear::Trained(l) = layer {
            stable(&mut l.weight, &format!("{path}.weight"));
            if let Some(b) = &mut l.bias {
                stable(b, &format!("{path}.bias"));
            }
        }
    }
    let embed = &mut model.model.embed_tokens.weight;
    if embed.is_require_grad() {
        stable(embed, "model.embed_tokens.weight");
    }
    if let Some(w) = &mut model.lm_head
        && w.is_require_grad()
    {
        stable(w, "lm_head.weight");
    }
}

/// The ids of every trained parameter (adapter `name` and the `modules_to_save`), each with
/// its rank: gradients are stored by rank.
pub(crate) fn trained_ids(model: &LlamaForCausalLM, name: &str) -> Vec<(ParamId, usize)> {
    let mut ids = Vec::new();
    for (_, l) in model.linears() {
        if let Some(a) = l.adapter(name) {
            ids.extend([(a.lora_a.id, 2), (a.lora_b.id, 2)]);
        }
        if let AdaptedLinear::Trained(l) = l {
            ids.push((l.weight.id, 2));
            ids.extend(l.bias.as_ref().map(|b| (b.id, 1)));
        }
    }
    let embed = &model.model.embed_tokens.weight;
    if embed.is_require_grad() {
        ids.push((embed.id, 2));
    }
    if let Some(w) = &model.lm_head
        && w.is_require_grad()
    {
        ids.push((w.id, 2));
    }
    ids
}
