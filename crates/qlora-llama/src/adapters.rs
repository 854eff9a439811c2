//! Adapters on a whole model: load a PEFT adapter onto the model's linears, collect the
//! model's adapters for saving, switch and merge them (PEFT's `PeftModel` operations).

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use qlora_nn::{AdaptedLinear, LoraConfig, LoraError, LoraMatcher, PeftAdapter};

use crate::{LlamaError, LlamaForCausalLM};

/// `modules_to_save` parameters of an adapter, checked and ready to put into the model.
#[derive(Default)]
struct SavedModules {
    embed: Option<Tensor<2>>,
    lm_head: Option<Tensor<2>>,
    linears: BTreeMap<String, AdaptedLinear>,
}

impl LlamaForCausalLM {
    /// Adds the adapter `adapter` under `name` to the linears it names (by HF module path,
    /// with the scaling its own config gives each path). Errors, leaving the model unchanged,
    /// if a module of the adapter is not a linear of this model, a shape does not fit, or the
    /// config's `target_modules` name a linear the weights do not have (PEFT refuses such a
    /// folder too).
    pub fn load_adapter(&mut self, adapter: &PeftAdapter, name: &str) -> Result<(), LlamaError> {
        let origin = adapter.origin();
        let in_adapter = |module: &str, problem: String| {
            LlamaError::Lora(LoraError::Adapter {
                source_name: origin.clone(),
                module: module.to_string(),
                problem,
            })
        };
        let known: BTreeSet<String> = self.linears().into_iter().map(|(p, _)| p).collect();
        if let Some(unknown) = adapter.modules.keys().find(|m| !known.contains(*m)) {
            return Err(in_adapter(
                unknown,
                "the adapter has weights for a module that is not a linear of this model".into(),
            ));
        }
        let matcher = LoraMatcher::new(&adapter.config)
            .map_err(|(field, problem)| in_adapter(field, problem))?;
        if let Some(missing) = known.iter().find(|p| {
            matcher.is_target(p, true, false)
                && !matcher.is_module_to_save(p)
                && !adapter.modules.contains_key(*p)
        }) {
            return Err(in_adapter(
                missing,
                "adapter_config.json's target_modules name it, but adapter_model.safetensors has \
                 no lora_A/lora_B weights for it"
                    .into(),
            ));
        }
        // Build every new layer first so that an error leaves the model as it was.
        let mut updated = Vec::new();
        for (path, layer) in self.linears() {
            if let Some(w) = adapter.modules.get(&path) {
                // Name the module in errors: the layer itself does not know its path.
                let in_module = |e: LoraError| in_adapter(&path, e.to_string());
                let a = w
                    .clone()
                    .into_adapter(&adapter.config, &path)
                    .map_err(in_module)?;
                let layer = layer.clone().with_adapter(name, a).map_err(in_module)?;
                updated.push((path.clone(), layer));
            }
        }
        let saved = self.saved_modules(adapter)?;
        let mut updated = updated.into_iter().peekable();
        for (path, slot) in self.linears_mut() {
            if updated.peek().is_some_and(|(p, _)| *p == path) {
                *slot = updated.next().expect("peeked").1;
            }
        }
        self.apply_saved(saved);
        Ok(())
    }

    /// Checks the adapter's `modules_to_save` parameters against this model and turns them
    /// into tensors (nothing is changed yet).
    fn saved_modules(&self, adapter: &PeftAdapter) -> Result<SavedModules, LlamaError> {
        let bad = |field: &str, problem: String| {
            LlamaError::Lora(LoraError::Adapter {
                source_name: adapter.origin(),
                module: field.into(),
                problem,
            })
        };
        let device = self.model.embed_tokens.weight.device();
        let [v, h] = self.model.embed_tokens.weight.dims();
        let mut out = SavedModules::default();
        let mut linears: BTreeMap<String, [Option<TensorData>; 2]> = BTreeMap::new();
        let known: BTreeMap<String, AdaptedLinear> = self
            .linears()
            .into_iter()
            .map(|(p, l)| (p, l.clone()))
            .collect();
        for (param, data) in &adapter.saved {
            let table = |name: &str| -> Result<Tensor<2>, LlamaError> {
                if data.shape().as_slice() != [v, h] {
                    return Err(bad(
                        name,
                        format!("saved shape {:?}, the model's is [{v}, {h}]", data.shape()),
                    ));
                }
                Ok(Tensor::from_data(data.clone().convert::<f32>(), &device))
            };
            match param.as_str() {
                "lm_head.weight" => out.lm_head = Some(table(param)?),
                "model.embed_tokens.weight" => out.embed = Some(table(param)?),
                _ => {
                    let (module, which) = match param.rsplit_once('.') {
                        Some((m, "weight")) => (m, 0),
                        Some((m, "bias")) => (m, 1),
                        _ => return Err(bad(param, "not a weight or bias".into())),
                    };
                    if !known.contains_key(module) {
                        return Err(bad(
                            param,
                            "modules_to_save names a module this model does not have".into(),
                        ));
                    }
                    linears.entry(module.to_string()).or_default()[which] = Some(data.clone());
                }
            }
        }
        for (module, [w, b]) in linears {
            let w = w.ok_or_else(|| bad(&module, "a saved bias without its weight".into()))?;
            let layer = known[&module]
                .clone()
                .with_saved(&module, w, b)
                .map_err(|e| bad("modules_to_save", e.to_string()))?;
            out.linears.insert(module, layer);
        }
        Ok(out)
    }

    fn apply_saved(&mut self, saved: SavedModules) {
        if let Some(w) = saved.embed {
            self.model.embed_tokens.weight = Param::from_tensor(w).set_require_grad(true);
        }
        if let Some(w) = saved.lm_head {
            self.config.tie_word_embeddings = false;
            self.lm_head = Some(Param::from_tensor(w).set_require_grad(true));
        }
        for (path, slot) in self.linears_mut() {
            if let Some(l) = saved.linears.get(&path) {
                *slot = l.clone();
            }
        }
    }

    /// The weights of the adapter `name` on every linear that has it, with `config`, ready to
    /// [`PeftAdapter::save`]; with them the full parameters of the modules trained under
    /// `modules_to_save` (trained linears, and the embedding or head when trainable).
    pub fn adapter(&self, name: &str, config: LoraConfig) -> PeftAdapter {
        let linears = self.linears();
        let mut adapter = PeftAdapter::from_adapters(
            config,
            linears
                .iter()
                .filter_map(|(p, l)| l.adapter(name).map(|a| (p.as_str(), a))),
        );
        for (path, l) in &linears {
            adapter.saved.extend(l.saved_params(path));
        }
        let embed = &self.model.embed_tokens.weight;
        if embed.is_require_grad() {
            adapter
                .saved
                .insert("model.embed_tokens.weight".into(), embed.val().into_data());
        }
        if let Some(w) = &self.lm_head
            && w.is_require_grad()
        {
            adapter
                .saved
                .insert("lm_head.weight".into(), w.val().into_data());
        }
        adapter
    }

    /// Makes `names` the active adapters on every layer (PEFT's `set_adapter`).
    pub fn set_active_adapters(&mut self, names: &[&str]) {
        for (_, l) in self.linears_mut() {
            if let Some(a) = l.adapters_mut() {
                a.set_active(names);
            }
        }
    }

    /// Turns all adapters off (`true`) or back on (PEFT's `disable_adapter` context).
    pub fn set_adapters_disabled(&mut self, disabled: bool) {
        for (_, l) in self.linears_mut() {
            if let Some(a) = l.adapters_mut() {
                a.set_disabled(disabled);
            }
        }
    }

    /// Merges the active adapters into the base weights in place, keeping them so that
    /// [`LlamaForCausalLM::unmerge_adapters`] can take them out (PEFT's `merge_adapter`). On an
    /// NF4 base each merge re-quantizes the weight: lossy, see `QLoraLinear::merge`.
    pub fn merge_adapters(&mut self) -> Result<(), LlamaError> {
        for (path, l) in self.linears_mut() {
            l.merge(&path)?;
        }
        Ok(())
    }

    /// Takes merged adapters out of the base weights (PEFT's `unmerge_adapter`).
    pub fn unmerge_adapters(&mut self) -> Result<(), LlamaError> {
        for (path, l) in self.linears_mut() {
            l.unmerge(&path)?;
        }
        Ok(())
    }

    /// Merges the active adapters into float copies of the weights and drops every adapter
    /// (PEFT's `merge_and_unload`): a plain float model. NF4 bases are dequantized first.
    pub fn merge_and_unload(mut self) -> Self {
        for (_, slot) in self.linears_mut() {
            *slot = slot.clone().merge_and_unload();
        }
        // Modules trained in full (`modules_to_save`) keep their trained values, frozen.
        self.model.embed_tokens.weight = self.model.embed_tokens.weight.set_require_grad(false);
        self.lm_head = self.lm_head.map(|w| w.set_require_grad(false));
        self
    }
}
