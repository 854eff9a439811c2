//! Adapters on a whole model: load a PEFT adapter onto the model's linears, collect the
//! model's adapters for saving, switch and merge them (PEFT's `PeftModel` operations).

use std::collections::BTreeSet;

use qlora_nn::{LoraConfig, LoraError, PeftAdapter};

use crate::{LlamaError, LlamaForCausalLM};

impl LlamaForCausalLM {
    /// Adds the adapter `adapter` under `name` to the linears it names (by HF module path,
    /// with the scaling its own config gives each path). Errors, leaving the model unchanged,
    /// if a module of the adapter is not a linear of this model or a shape does not fit.
    pub fn load_adapter(&mut self, adapter: &PeftAdapter, name: &str) -> Result<(), LlamaError> {
        let known: BTreeSet<String> = self.linears().into_iter().map(|(p, _)| p).collect();
        if let Some(unknown) = adapter.modules.keys().find(|m| !known.contains(*m)) {
            return Err(LlamaError::Lora(LoraError::BadValue {
                path: "<adapter>".into(),
                field: unknown.clone(),
                problem: "the adapter has weights for a module that is not a linear of this model"
                    .into(),
            }));
        }
        // Build every new layer first so that an error leaves the model as it was.
        let mut updated = Vec::new();
        for (path, layer) in self.linears() {
            if let Some(w) = adapter.modules.get(&path) {
                // Name the module in errors: the layer itself does not know its path.
                let in_module = |e: LoraError| {
                    LlamaError::Lora(LoraError::BadValue {
                        path: "<adapter>".into(),
                        field: path.clone(),
                        problem: e.to_string(),
                    })
                };
                let a = w
                    .clone()
                    .into_adapter(&adapter.config, &path)
                    .map_err(in_module)?;
                let layer = layer.clone().with_adapter(name, a).map_err(in_module)?;
                updated.push((path.clone(), layer));
            }
        }
        let mut updated = updated.into_iter().peekable();
        for (path, slot) in self.linears_mut() {
            if updated.peek().is_some_and(|(p, _)| *p == path) {
                *slot = updated.next().expect("peeked").1;
            }
        }
        Ok(())
    }

    /// The weights of the adapter `name` on every linear that has it, with `config`, ready to
    /// [`PeftAdapter::save`].
    pub fn adapter(&self, name: &str, config: LoraConfig) -> PeftAdapter {
        let linears = self.linears();
        PeftAdapter::from_adapters(
            config,
            linears
                .iter()
                .filter_map(|(p, l)| l.adapter(name).map(|a| (p.as_str(), a))),
        )
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
        self
    }
}
