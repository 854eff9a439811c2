//! Checkpoints that a run resumes from exactly: the adapter in PEFT's format, the optimizer
//! state (Burn's record bytes), and the trainer state (step, data position, history), plus a
//! fingerprint of the model and settings so that a checkpoint of another run is refused.
//!
//! A checkpoint is written into a fresh temporary folder, every file synced, then swapped in
//! with renames: `checkpoint/` is always a complete checkpoint (or, during the swap,
//! `checkpoint.old/` is), so a run killed at any moment loses at most the steps since the last
//! save.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Bytes, Tensor, TensorData};
use qlora_nn::{AdaptedLinear, CausalLm, LoraModel, PeftAdapter, write_atomic};
use serde::{Deserialize, Serialize};

use crate::{TrainError, TrainState, Trainer};

/// The folder names inside a run's output folder.
const CURRENT: &str = "checkpoint";
const PREVIOUS: &str = "checkpoint.old";

#[derive(Serialize, Deserialize)]
struct StateFile {
    fingerprint: String,
    state: TrainState,
}

/// The checkpoint folder to resume from in `out`, a run's output folder (the current one, or
/// the previous one if a save was cut off during its swap); none if no run saved one there.
pub fn find_checkpoint(out: &Path) -> Option<PathBuf> {
    [CURRENT, PREVIOUS]
        .iter()
        .map(|n| out.join(n))
        .find(|p| p.join("trainer_state.json").exists())
}

/// The step of the checkpoint in `out`, if one is there and readable.
pub(crate) fn checkpoint_step(out: &Path) -> Option<usize> {
    let dir = find_checkpoint(out)?;
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    serde_json::from_str::<StateFile>(&text)
        .ok()
        .map(|f| f.state.step)
}

impl<M: CausalLm> Trainer<M> {
    /// What must match for a checkpoint to be resumed: the model's config, the LoRA config, the
    /// data sizes and the settings that shape the run.
    pub fn fingerprint(&self) -> String {
        let c = &self.config;
        let (train, eval) = self.data();
        format!(
            "model={}|lora={}|data={}/{}|batch={}x{}|seed={}|optimizer={:?}",
            self.model.architecture(),
            self.lora.to_peft_json().replace(char::is_whitespace, ""),
            train.len(),
            eval.len(),
            c.batch_size,
            c.grad_accum,
            c.seed,
            c.optimizer,
        )
    }

    /// Writes a checkpoint into `out/checkpoint/` (see the module docs).
    pub fn save_checkpoint(&self, out: &Path) -> Result<PathBuf, TrainError> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        // Temporary folders of runs killed mid-write are garbage: clear them.
        if let Ok(entries) = std::fs::read_dir(out) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("checkpoint.tmp-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let tmp = out.join(format!("checkpoint.tmp-{}", std::process::id()));
        self.model
            .adapter(self.adapter_name(), self.lora.clone())
            .save(&tmp)?;
        let optim = self.optim.into_bytes().map_err(|e| TrainError::Resume {
            path: tmp.display().to_string(),
            problem: format!("serializing the optimizer state: {e:?}"),
        })?;
        write_atomic(&tmp.join("optimizer.bpk"), &optim)?;
        let state = StateFile {
            fingerprint: self.fingerprint(),
            state: self.state.clone(),
        };
        let json = serde_json::to_string(&state).expect("state JSON");
        write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
        let current = out.join(CURRENT);
        let previous = out.join(PREVIOUS);
        // `previous` is dropped only when `current` is there to take its place: after a run
        // was killed mid-swap, `previous` is the one complete checkpoint until the rename below.
        if current.exists() {
            let _ = std::fs::remove_dir_all(&previous);
            std::fs::rename(&current, &previous).map_err(|e| TrainError::io(&current, e))?;
        }
        std::fs::rename(&tmp, &current).map_err(|e| TrainError::io(&current, e))?;
        let _ = std::fs::remove_dir_all(&previous);
        Ok(current)
    }

    /// Restores adapter weights, optimizer state and trainer state from `dir`. Errors, leaving
    /// the trainer as it was, if the checkpoint belongs to another model or run settings.
    pub fn resume(&mut self, dir: &Path) -> Result<(), TrainError> {
        let fail = |problem: String| TrainError::Resume {
            path: dir.display().to_string(),
            problem,
        };
        let state_path = dir.join("trainer_state.json");
        let text =
            std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        let file: StateFile =
            serde_json::from_str(&text).map_err(|e| fail(format!("trainer_state.json: {e}")))?;
        let mine = self.fingerprint();
        if file.fingerprint != mine {
            let what = ["model=", "lora=", "data=", "batch=", "seed=", "optimizer="]
                .into_iter()
                .find(|k| field(&file.fingerprint, k) != field(&mine, k))
                .unwrap_or("settings");
            return Err(fail(format!(
                "it was made with another {} (`{}` there, `{}` here)",
                what.trim_end_matches('='),
                short(field(&file.fingerprint, what)),
                short(field(&mine, what))
            )));
        }
        // The state must fit the data it claims to continue: a position past the training
        // samples would silently restart the epoch, a history of another length would misstate
        // the run.
        let n_train = self.data().0.len();
        if file.state.position.index > n_train {
            return Err(fail(format!(
                "trainer_state.json: its data position ({} samples into epoch {}) is past the {} \
                 training samples here",
                file.state.position.index, file.state.position.epoch, n_train
            )));
        }
        if file.state.history.len() != file.state.step {
            return Err(fail(format!(
                "trainer_state.json: {} steps done but {} step records",
                file.state.step,
                file.state.history.len()
            )));
        }
        let device = self.model.device();
        let adapter = PeftAdapter::load(dir, &device)?;
        let weights = dir.join("adapter_model.safetensors");
        let weights = weights.display();
        let optim_path = dir.join("optimizer.bpk");
        let bytes = std::fs::read(&optim_path).map_err(|e| TrainError::io(&optim_path, e))?;
        let optim = self
            .optim
            .clone()
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| fail(format!("optimizer.bpk: {e:?}")))?;
        // Replace the adapter weights in place (same names, same stable ids).
        let mut model = self.model.clone();
        let name = self.adapter_name().to_string();
        // Exact or refused: every adapted linear of the model must be in the checkpoint, and
        // every module of the checkpoint in the model.
        let mut linears = model.linears_mut();
        if let Some(unknown) = adapter
            .modules
            .keys()
            .find(|m| !linears.iter().any(|(p, _)| p == *m))
        {
            return Err(fail(format!(
                "{weights}: `{unknown}` is not a linear of this model"
            )));
        }
        for (path, layer) in linears.iter_mut() {
            let has = layer
                .adapters_mut()
                .and_then(|a| a.get_mut(&name))
                .is_some();
            let Some(w) = adapter.modules.get(path.as_str()) else {
                if has {
                    return Err(fail(format!(
                        "{weights} has no weights for `{path}`, which this model adapts: a \
                         resume would train it from fresh weights"
                    )));
                }
                continue;
            };
            let Some(a) = layer.adapters_mut().and_then(|a| a.get_mut(&name)) else {
                return Err(fail(format!(
                    "{weights}: `{path}` has no adapter `{name}` in this model"
                )));
            };
            if a.lora_a.dims() != w.lora_a.dims() || a.lora_b.dims() != w.lora_b.dims() {
                return Err(fail(format!("`{path}`: adapter shapes differ")));
            }
            a.lora_a =
                burn::module::Param::initialized(a.lora_a.id, w.lora_a.clone().require_grad());
            a.lora_b =
                burn::module::Param::initialized(a.lora_b.id, w.lora_b.clone().require_grad());
            match (&mut a.magnitude, &w.magnitude) {
                (Some(m), Some(v)) if m.dims() == v.dims() => {
                    *m = burn::module::Param::initialized(m.id, v.clone().require_grad());
                }
                (None, None) => {}
                _ => {
                    return Err(fail(format!(
                        "`{path}`: DoRA magnitudes differ (use_dora in one of the model and \
                         the checkpoint only)"
                    )));
                }
            }
        }
        restore_saved(&mut model, &adapter, &name, &fail)?;
        self.model = model;
        self.optim = optim;
        self.state = file.state;
        Ok(())
    }
}

/// Puts the checkpoint's `modules_to_save` parameters and the trained rows of adapter `name`'s
/// trainable tokens into `model` in place (same ids, so the optimizer state found under them
/// still applies).
fn restore_saved<M: LoraModel>(
    model: &mut M,
    adapter: &PeftAdapter,
    adapter_name: &str,
    fail: &dyn Fn(String) -> TrainError,
) -> Result<(), TrainError> {
    fn put<const D: usize>(
        p: &mut Param<Tensor<D>>,
        data: &TensorData,
        name: &str,
        fail: &dyn Fn(String) -> TrainError,
    ) -> Result<(), TrainError> {
        if data.shape().as_slice() != p.dims().as_slice() {
            return Err(fail(format!(
                "`{name}`: saved shape {:?}, the model's {:?}",
                data.shape(),
                p.dims()
            )));
        }
        let t = Tensor::<D>::from_data(data.clone().convert::<f32>(), &p.device());
        *p = Param::initialized(p.id, t.require_grad());
        Ok(())
    }
    // Every module this model trains in full must be restored, or the resume is partly fresh.
    let mut wanted: Vec<String> = model
        .tables()
        .into_iter()
        .filter(|(_, t)| t.is_require_grad())
        .map(|(p, _)| p)
        .collect();
    for (path, layer) in model.linears() {
        if let AdaptedLinear::Trained(l) = layer {
            wanted.push(format!("{path}.weight"));
            if l.bias.is_some() {
                wanted.push(format!("{path}.bias"));
            }
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !adapter.saved.contains_key(*w)) {
        return Err(fail(format!(
            "adapter_model.safetensors has no `{missing}`, which this model trains in full \
             (modules_to_save): a resume would train it from the base weights"
        )));
    }
    for (path, _, t) in model.token_tables_mut() {
        let Some(t) = t.get_mut(adapter_name) else {
            continue;
        };
        let Some(data) = adapter.tokens.get(&path) else {
            return Err(fail(format!(
                "adapter_model.safetensors has no trainable tokens for `{path}`, which this \
                 model trains: a resume would train them from the base's rows"
            )));
        };
        put(&mut t.delta, data, &path, fail)?;
    }
    let tied_copy = model.tied_tables().map(|(_, head)| head);
    for (name, data) in &adapter.saved {
        // The copy PEFT's ensure_weight_tying writes of a tied table: the embedding's values.
        if tied_copy.as_ref() == Some(name) {
            continue;
        }
        if let Some((_, t)) = model.tables_mut().into_iter().find(|(p, _)| p == name) {
            put(t, data, name, fail)?;
            continue;
        }
        let (module, which) = name
            .rsplit_once('.')
            .ok_or_else(|| fail(format!("`{name}`: not a parameter path")))?;
        let mut found = false;
        for (path, layer) in model.linears_mut() {
            if path != module {
                continue;
            }
            let AdaptedLinear::Trained(l) = layer else {
                return Err(fail(format!("`{module}` is not trained in full here")));
            };
            match which {
                // Saved `[out, in]`; Burn's Linear holds `[in, out]`.
                "weight" => {
                    let w =
                        Tensor::<2>::from_data(data.clone().convert::<f32>(), &l.weight.device());
                    put(&mut l.weight, &w.transpose().into_data(), name, fail)?;
                }
                "bias" => match &mut l.bias {
                    Some(b) => put(b, data, name, fail)?,
                    None => return Err(fail(format!("`{module}` has no bias"))),
                },
                _ => return Err(fail(format!("`{name}`: not a weight or bias"))),
            }
            found = true;
        }
        if !found {
            return Err(fail(format!("`{module}` is not a linear of this model")));
        }
    }
    Ok(())
}

fn field<'a>(fingerprint: &'a str, key: &str) -> &'a str {
    fingerprint
        .split('|')
        .find_map(|f| f.strip_prefix(key))
        .unwrap_or("")
}

fn short(s: &str) -> String {
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s.to_string()
    }
}
