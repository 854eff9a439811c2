//! PEFT's model-level operations (`PeftModel`: load and save adapter folders, several named
//! adapters, switch, disable, merge, `merge_and_unload`) for any Burn model whose linears are
//! [`AdaptedLinear`]s.
//!
//! A model lists its adapted linears by module path (the names `target_modules` and adapter
//! files use) and, if it has any, the whole 2-D tables outside them that `modules_to_save` may
//! train (an embedding, an untied head); every operation is a provided method built on those
//! lists, so that a user's own model gets the same surface as the LLaMA-style models with one
//! short `impl`.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

use crate::{
    AdaptedLinear, InitLoraWeights, LoraApplier, LoraConfig, LoraError, LoraMatcher, ModuleKind,
    PeftAdapter, TokenAdapters, TrainableTokenIndices, TrainableTokens,
};

/// The default body of [`LoraModel::put_table`], for an override to fall back on: `value` into
/// the table at `path` of [`LoraModel::tables_mut`], which must have its shape, trainable.
pub fn put_into_tables<M: LoraModel>(
    model: &mut M,
    path: &str,
    value: Tensor<2>,
) -> Result<(), String> {
    let mut tables = model.tables_mut();
    let Some((_, p)) = tables.iter_mut().find(|(p, _)| p == path) else {
        return Err("modules_to_save names a parameter this model does not have".into());
    };
    if p.dims() != value.dims() {
        return Err(format!(
            "saved shape {:?}, the model's is {:?}",
            value.dims(),
            p.dims()
        ));
    }
    **p = Param::from_tensor(value).set_require_grad(true);
    Ok(())
}

/// A model with LoRA adapters on its linears. Implement the two `linears` methods (and the two
/// `tables` methods where `modules_to_save` may name an embedding or head); the PEFT operations
/// come with them.
///
/// ```
/// use burn::module::Module;
/// use qlora_nn::{AdaptedLinear, LoraModel};
///
/// #[derive(Module, Debug)]
/// struct Mlp {
///     fc1: AdaptedLinear,
///     fc2: AdaptedLinear,
/// }
///
/// impl LoraModel for Mlp {
///     fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
///         vec![("fc1".into(), &self.fc1), ("fc2".into(), &self.fc2)]
///     }
///     fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
///         vec![("fc1".into(), &mut self.fc1), ("fc2".into(), &mut self.fc2)]
///     }
/// }
/// ```
pub trait LoraModel: Module {
    /// Every linear that may carry an adapter or be trained in full, with its module path
    /// (`model.layers.3.self_attn.q_proj`), always in the same order.
    fn linears(&self) -> Vec<(String, &AdaptedLinear)>;

    /// [`LoraModel::linears`], mutably, in the same order.
    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)>;

    /// Whole 2-D parameters outside the linears that `modules_to_save` may train, by parameter
    /// path (`model.embed_tokens.weight`), in PEFT's layout. None by default.
    fn tables(&self) -> Vec<(String, &Param<Tensor<2>>)> {
        Vec::new()
    }

    /// [`LoraModel::tables`], mutably, in the same order.
    fn tables_mut(&mut self) -> Vec<(String, &mut Param<Tensor<2>>)> {
        Vec::new()
    }

    /// Puts trained values `value` into the table at `path`, trainable. By default the table
    /// must be one of [`LoraModel::tables_mut`] with the same shape; a model whose head is tied
    /// to its embedding overrides it: with `tied` (PEFT's `ensure_weight_tying`) the value is
    /// for the one table both use, without it for `path` alone (the other keeps the base's
    /// weights, as PEFT's `modules_to_save` copy does). The error says what is wrong (the
    /// caller adds the adapter and path).
    fn put_table(&mut self, path: &str, value: Tensor<2>, tied: bool) -> Result<(), String> {
        let _ = tied;
        put_into_tables(self, path, value)
    }

    /// The parameter paths of the input embedding and of the head (`model.embed_tokens.weight`,
    /// `lm_head.weight`) when the head is tied to the embedding (one parameter); `None` (the
    /// default) otherwise.
    fn tied_tables(&self) -> Option<(String, String)> {
        None
    }

    /// The tables that may carry trainable tokens (PEFT's `trainable_token_indices`), by
    /// module path (`model.embed_tokens`, `lm_head`), the input embedding first, each with the
    /// base table `[vocab, hidden]` its rows come from. None by default.
    fn token_tables(&self) -> Vec<(String, Tensor<2>, &TokenAdapters)> {
        Vec::new()
    }

    /// [`LoraModel::token_tables`], mutably, in the same order.
    fn token_tables_mut(&mut self) -> Vec<(String, Tensor<2>, &mut TokenAdapters)> {
        Vec::new()
    }

    /// Which token table gets which rows under `config`'s `trainable_token_indices`, as PEFT
    /// resolves them: a list is for the input embedding; a dict names tables by module name
    /// (exact or dotted-suffix match). On a tied model, a head given the embedding's rows is
    /// left out (it uses the embedding's trained rows); different rows are refused with
    /// `ensure_weight_tying`, trained apart without it.
    fn token_plan(&self, config: &LoraConfig) -> Result<Vec<(String, Vec<usize>)>, LoraError> {
        let bad = |problem: String| LoraError::Config {
            field: "trainable_token_indices".into(),
            problem,
        };
        let Some(tokens) = &config.trainable_token_indices else {
            return Ok(Vec::new());
        };
        let tables: Vec<(String, usize)> = self
            .token_tables()
            .into_iter()
            .map(|(p, base, _)| (p, base.dims()[0]))
            .collect();
        let Some((embedding, _)) = tables.first() else {
            return Err(bad(
                "this model has no table that can train chosen rows".into()
            ));
        };
        let mut plan: Vec<(String, Vec<usize>)> = match tokens {
            TrainableTokenIndices::List(rows) => vec![(embedding.clone(), rows.clone())],
            TrainableTokenIndices::ByModule(by) => {
                let mut plan = Vec::new();
                for (name, rows) in by {
                    let Some((path, _)) = tables
                        .iter()
                        .find(|(p, _)| p == name || p.ends_with(&format!(".{name}")))
                    else {
                        let names: Vec<&str> = tables.iter().map(|(p, _)| p.as_str()).collect();
                        return Err(bad(format!(
                            "`{name}` is not a table of this model (it has `{}`)",
                            names.join("`, `")
                        )));
                    };
                    plan.push((path.clone(), rows.clone()));
                }
                plan
            }
        };
        for (path, rows) in &plan {
            let vocab = tables
                .iter()
                .find(|(p, _)| p == path)
                .map_or(0, |(_, v)| *v);
            crate::tokens::check_indices(rows, vocab).map_err(|e| bad(format!("`{path}`: {e}")))?;
        }
        if let Some((e, h)) = self.tied_tables() {
            let module = |p: &str| p.strip_suffix(".weight").unwrap_or(p).to_string();
            let (e, h) = (module(&e), module(&h));
            let rows = |p: &str| plan.iter().find(|(q, _)| q == p).map(|(_, r)| r.clone());
            if let (Some(er), Some(hr)) = (rows(&e), rows(&h)) {
                if er == hr {
                    plan.retain(|(p, _)| *p != h);
                } else if config.ensure_weight_tying {
                    return Err(bad(format!(
                        "ensure_weight_tying is set, but the tied tables `{e}` and `{h}` are \
                         given different rows ({er:?} and {hr:?})"
                    )));
                }
            }
        }
        Ok(plan)
    }

    /// Adds new trainable tokens under adapter `name` as `config` asks, each starting at its
    /// base row (PEFT's default). Nothing changes on an error.
    fn add_trainable_tokens(&mut self, config: &LoraConfig, name: &str) -> Result<(), LoraError> {
        let plan = self.token_plan(config)?;
        let mut made = Vec::new();
        for (path, rows) in plan {
            let (_, base, _) = self
                .token_tables()
                .into_iter()
                .find(|(p, ..)| *p == path)
                .expect("planned from token_tables");
            made.push((path, TrainableTokens::new(&base, rows)?));
        }
        self.put_tokens(made, name)
    }

    /// Puts `tokens` (by table path) under adapter `name`, checking every name first.
    #[doc(hidden)]
    fn put_tokens(
        &mut self,
        tokens: Vec<(String, TrainableTokens)>,
        name: &str,
    ) -> Result<(), LoraError> {
        for (path, _, t) in self.token_tables() {
            if tokens.iter().any(|(p, _)| *p == path) && t.get(name).is_some() {
                return Err(LoraError::Layer {
                    problem: format!("`{path}` already has trainable tokens of adapter `{name}`"),
                });
            }
        }
        for (path, t) in tokens {
            let mut tables = self.token_tables_mut();
            let (_, _, slot) = tables
                .iter_mut()
                .find(|(p, ..)| *p == path)
                .expect("a table of this model");
            slot.add(name, t)?;
        }
        Ok(())
    }

    /// Writes the active trainable tokens into their tables and drops every token adapter
    /// (part of [`LoraModel::merge_and_unload`]). The head is merged first, alone (so that a
    /// tied head with rows of its own becomes a table of its own, from the base embedding);
    /// the input embedding then keeps a tied head tied.
    fn merge_tokens(&mut self) -> Result<(), LoraError> {
        let merged: Vec<(usize, String, Tensor<2>)> = self
            .token_tables()
            .into_iter()
            .enumerate()
            .filter(|(_, (.., t))| t.any_active())
            .map(|(i, (p, base, t))| (i, p, t.apply_table(base).detach()))
            .collect();
        for (i, path, value) in merged.into_iter().rev() {
            self.put_table(&format!("{path}.weight"), value, i == 0)
                .map_err(|problem| LoraError::Layer { problem })?;
        }
        for (_, _, t) in self.token_tables_mut() {
            t.clear();
        }
        Ok(())
    }

    /// Where PEFT's module paths differ from this model's own ([`LoraModel::linears`],
    /// [`LoraModel::tables`]): `Some((peft, own))`, the prefix PEFT's paths have in place of
    /// `own` (a text model loaded from a multimodal checkpoint, whose PEFT adapters name its
    /// modules `model.language_model.*`: `("model.language_model.", "model.")`). Adapters are
    /// read from and written to PEFT's paths. `None` (the default): the same paths.
    fn peft_prefix(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// Adds `adapter` under `name` to the linears it names (by module path, with the scaling
    /// its own config gives each path), and puts its `modules_to_save` parameters in. Errors,
    /// leaving the model unchanged, if a module of the adapter is not a linear of this model, a
    /// shape does not fit, or the config's `target_modules` name a linear the weights do not
    /// have (PEFT refuses such a folder too).
    fn load_adapter(&mut self, adapter: &PeftAdapter, name: &str) -> Result<(), LoraError>
    where
        Self: Sized,
    {
        // The adapter's paths become this model's; its config (regex `target_modules`,
        // `rank_pattern` keys, ...) is matched against PEFT's paths, as PEFT matches it.
        let prefix = self.peft_prefix();
        let peft_path = |p: &str| -> String {
            match prefix.and_then(|(peft, own)| p.strip_prefix(own).map(|r| format!("{peft}{r}"))) {
                Some(q) => q,
                None => p.to_string(),
            }
        };
        let ours;
        let adapter = match prefix {
            Some((peft, own)) => {
                ours = adapter.clone().with_module_prefix(peft, own);
                &ours
            }
            None => adapter,
        };
        let origin = adapter.origin();
        let in_adapter = |module: &str, problem: String| LoraError::Adapter {
            source_name: origin.clone(),
            module: module.to_string(),
            problem,
        };
        let known: BTreeMap<String, AdaptedLinear> = self
            .linears()
            .into_iter()
            .map(|(p, l)| (p, l.clone()))
            .collect();
        // PEFT's `load_adapter` raises on a name in use; so does this, before anything changes.
        if let Some((path, _)) = known.iter().find(|(_, l)| l.adapter(name).is_some()) {
            return Err(in_adapter(
                path,
                format!("an adapter named `{name}` is already loaded: choose another name"),
            ));
        }
        if let Some(unknown) = adapter.modules.keys().find(|m| !known.contains_key(*m)) {
            return Err(in_adapter(
                unknown,
                "the adapter has weights for a module that is not a linear of this model".into(),
            ));
        }
        let matcher = LoraMatcher::new(&adapter.config)
            .map_err(|(field, problem)| in_adapter(field, problem))?;
        // PEFT raises when an adapter's targets match no module of the model ("Target modules
        // ... not found in the base model"): such an adapter would change nothing.
        if adapter.modules.is_empty()
            && adapter.saved.is_empty()
            && adapter.tokens.is_empty()
            && !known
                .keys()
                .any(|p| matcher.is_target(&peft_path(p), ModuleKind::Linear))
        {
            return Err(in_adapter(
                "target_modules",
                "adapter_config.json's target_modules match no linear of this model (and the \
                 adapter has no weights): it would change nothing"
                    .into(),
            ));
        }
        if let Some(missing) = known.keys().find(|p| {
            matcher.is_target(&peft_path(p), ModuleKind::Linear)
                && !matcher.is_module_to_save(&peft_path(p))
                && !adapter.modules.contains_key(*p)
        }) {
            return Err(in_adapter(
                missing,
                "adapter_config.json's target_modules name it, but adapter_model.safetensors has \
                 no lora_A/lora_B weights for it"
                    .into(),
            ));
        }
        // An adapter made by PiSSA or LoftQ sits on the base its initialisation made: as PEFT
        // does on load, the initialisation runs again on the weight, the file's A and B replace
        // its own.
        let reinit = match adapter.config.init_lora_weights {
            InitLoraWeights::Pissa { .. } | InitLoraWeights::Loftq { .. } => {
                let device = known.values().next().map(AdaptedLinear::device);
                match device {
                    Some(d) => Some(LoraApplier::new(adapter.config.clone(), None, &d)?),
                    None => None,
                }
            }
            _ => None,
        };
        // Everything is built and checked first, so that an error leaves the model as it was.
        let mut updated: BTreeMap<String, AdaptedLinear> = BTreeMap::new();
        for (path, w) in &adapter.modules {
            let in_module = |e: LoraError| in_adapter(path, e.to_string());
            let a = w
                .clone()
                .into_adapter(&adapter.config, &peft_path(path))
                .map_err(in_module)?;
            let layer = match &reinit {
                Some(applier) => known[path]
                    .clone()
                    .with_initialised_base(applier, path)
                    .map_err(in_module)?,
                None => known[path].clone(),
            };
            let layer = layer.with_adapter(name, a).map_err(in_module)?;
            updated.insert(path.clone(), layer);
        }
        let table_paths: BTreeSet<String> = self.tables().into_iter().map(|(p, _)| p).collect();
        let mut tables = Vec::new();
        let mut saved_linears: BTreeMap<&str, [Option<&TensorData>; 2]> = BTreeMap::new();
        for (param, data) in &adapter.saved {
            let linear = param
                .rsplit_once('.')
                .filter(|(m, w)| known.contains_key(*m) && matches!(*w, "weight" | "bias"));
            match linear {
                Some((module, which)) => {
                    saved_linears.entry(module).or_default()[usize::from(which == "bias")] =
                        Some(data)
                }
                None if data.shape().len() == 2 => tables.push((param, data)),
                None if table_paths.contains(param) => {
                    return Err(in_adapter(param, "a table must be 2-D".into()));
                }
                None => {
                    return Err(in_adapter(
                        param,
                        "modules_to_save names a parameter this model does not have".into(),
                    ));
                }
            }
        }
        for (module, [w, b]) in saved_linears {
            let w =
                w.ok_or_else(|| in_adapter(module, "a saved bias without its weight".into()))?;
            let base = updated
                .remove(module)
                .unwrap_or_else(|| known[module].clone());
            let layer = base
                .with_saved(module, w.clone(), b.cloned())
                .map_err(|e| in_adapter("modules_to_save", e.to_string()))?;
            updated.insert(module.to_string(), layer);
        }
        // Trainable tokens: the rows the config gives each table, the values the file holds.
        let plan = self
            .token_plan(&adapter.config)
            .map_err(|e| in_adapter("trainable_token_indices", e.to_string()))?;
        if let Some(extra) = adapter
            .tokens
            .keys()
            .find(|k| !plan.iter().any(|(p, _)| p == *k))
        {
            return Err(in_adapter(
                extra,
                "the file has trainable tokens for it, but adapter_config.json's \
                 trainable_token_indices gives it none"
                    .into(),
            ));
        }
        let mut tokens = Vec::new();
        for (path, rows) in plan {
            let Some(data) = adapter.tokens.get(&path) else {
                return Err(in_adapter(
                    &path,
                    "adapter_config.json's trainable_token_indices gives it rows, but \
                     adapter_model.safetensors has no token_adapter.trainable_tokens_delta for it"
                        .into(),
                ));
            };
            let (_, base, _) = self
                .token_tables()
                .into_iter()
                .find(|(p, ..)| *p == path)
                .expect("planned from token_tables");
            let values = Tensor::<2>::from_data(data.clone().convert::<f32>(), &base.device());
            let t = TrainableTokens::from_values(values, rows, base.dims())
                .map_err(|e| in_adapter(&path, e.to_string()))?;
            tokens.push((path, t));
        }
        // Tables go into a copy, so that one that does not fit leaves this model unchanged.
        let mut staged = self.clone();
        staged
            .put_tokens(tokens, name)
            .map_err(|e| in_adapter("trainable_token_indices", e.to_string()))?;
        let tied = adapter.config.ensure_weight_tying;
        let device = known
            .values()
            .next()
            .map(AdaptedLinear::device)
            .or_else(|| staged.tables().first().map(|(_, p)| p.device()));
        for (param, data) in tables {
            let Some(device) = &device else {
                return Err(in_adapter(param, "this model has no parameters".into()));
            };
            let value = Tensor::<2>::from_data(data.clone().convert::<f32>(), device);
            staged
                .put_table(param, value, tied)
                .map_err(|p| in_adapter(param, p))?;
        }
        for (path, slot) in staged.linears_mut() {
            if let Some(l) = updated.remove(&path) {
                *slot = l;
            }
        }
        *self = staged;
        Ok(())
    }

    /// The weights of the adapter `name` on every linear that has it, with `config`, ready to
    /// [`PeftAdapter::save`]; with them the full parameters of the modules trained under
    /// `modules_to_save` (trained linears, and the tables that are trainable).
    fn adapter(&self, name: &str, config: LoraConfig) -> PeftAdapter {
        let linears = self.linears();
        let mut adapter = PeftAdapter::from_adapters(
            config,
            linears
                .iter()
                .filter_map(|(p, l)| l.adapter(name).map(|a| (p.as_str(), a))),
        );
        // DoRA adapters are saved as such whatever the config given says (PEFT's loader needs
        // `use_dora` to read the magnitudes).
        if adapter.modules.values().any(|w| w.magnitude.is_some()) {
            adapter.config.use_dora = true;
        }
        for (path, l) in &linears {
            adapter.saved.extend(l.saved_params(path));
        }
        for (path, t) in self.tables() {
            if t.is_require_grad() {
                adapter.saved.insert(path, t.val().into_data());
            }
        }
        // PEFT with `ensure_weight_tying` saves a tied table under both names.
        if adapter.config.ensure_weight_tying
            && let Some((e, h)) = self.tied_tables()
            && let Some(v) = adapter.saved.get(&e).cloned()
        {
            adapter.saved.insert(h, v);
        }
        for (path, _, t) in self.token_tables() {
            if let Some(t) = t.get(name) {
                adapter.tokens.insert(path, t.delta.val().into_data());
            }
        }
        match self.peft_prefix() {
            Some((peft, own)) => adapter.with_module_prefix(own, peft),
            None => adapter,
        }
    }

    /// Makes `names` the active adapters on every layer (PEFT's `set_adapter`).
    fn set_active_adapters(&mut self, names: &[&str]) {
        for (_, l) in self.linears_mut() {
            if let Some(a) = l.adapters_mut() {
                a.set_active(names);
            }
        }
        for (_, _, t) in self.token_tables_mut() {
            t.set_active(names);
        }
    }

    /// Turns all adapters off (`true`) or back on (PEFT's `disable_adapter` context).
    fn set_adapters_disabled(&mut self, disabled: bool) {
        for (_, l) in self.linears_mut() {
            if let Some(a) = l.adapters_mut() {
                a.set_disabled(disabled);
            }
        }
        for (_, _, t) in self.token_tables_mut() {
            t.set_disabled(disabled);
        }
    }

    /// Merges the active adapters into the base weights in place, keeping them so that
    /// [`LoraModel::unmerge_adapters`] can take them out (PEFT's `merge_adapter`). On an NF4
    /// base each merge re-quantizes the weight: lossy, see `QLoraLinear::merge`.
    fn merge_adapters(&mut self) -> Result<(), LoraError> {
        for (path, l) in self.linears_mut() {
            l.merge(&path)?;
        }
        Ok(())
    }

    /// Takes merged adapters out of the base weights (PEFT's `unmerge_adapter`).
    fn unmerge_adapters(&mut self) -> Result<(), LoraError> {
        for (path, l) in self.linears_mut() {
            l.unmerge(&path)?;
        }
        Ok(())
    }

    /// Merges the active adapters into float copies of the weights and drops every adapter
    /// (PEFT's `merge_and_unload`): a plain float model. NF4 bases are dequantized first;
    /// modules trained in full keep their trained values, frozen.
    fn merge_and_unload(mut self) -> Self
    where
        Self: Sized,
    {
        self.merge_tokens()
            .expect("merged rows have their table's shape");
        for (_, slot) in self.linears_mut() {
            *slot = slot.clone().merge_and_unload();
        }
        for (_, t) in self.tables_mut() {
            *t = t.clone().set_require_grad(false);
        }
        self
    }

    /// Gives every trained parameter (adapter `name`'s `lora_A`/`lora_B`, the modules trained
    /// in full) an id derived from its path, so that optimizer state saved under it is found
    /// again after the model is rebuilt (a resumed run).
    fn stabilize_trained_ids(&mut self, name: &str) {
        crate::param_ids::stabilize_trained_ids(self, name)
    }

    /// The ids of every trained parameter (adapter `name` and the modules trained in full),
    /// each with its tensor rank, in a fixed order.
    fn trained_param_ids(&self, name: &str) -> Vec<(ParamId, usize)> {
        crate::param_ids::trained_param_ids(self, name)
    }
}
