//! Trainable tokens: chosen rows of an embedding or output-head table trained as a small
//! parameter that replaces them, PEFT's `TrainableTokensLayer` (its `trainable_token_indices`
//! LoRA option). The usual use is an untrained special token of a base model (`<|im_end|>`,
//! `<|eot_id|>`): its embedding row is noise, so a model fine-tuned on chat never learns to stop
//! unless that row trains too; training the whole table (`modules_to_save`) would cost a copy
//! of it per adapter, these rows cost `n × hidden`.
//!
//! As in PEFT, the parameter (`trainable_tokens_delta`, `[n, hidden]`) holds the rows' values,
//! not a difference from the base: the table the model uses is the base table with rows
//! `indices[k]` replaced by row `k`. Replacing is exact (a float mask, not `base + Δ`), so a
//! folder's rows come back bit for bit.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor, TensorData};

use crate::LoraError;

/// The trained rows of one adapter on one table.
#[derive(Module, Debug)]
pub struct TrainableTokens {
    /// PEFT's `trainable_tokens_delta`: the values of rows `indices`, `[n, hidden]`.
    pub delta: Param<Tensor<2>>,
    #[module(skip)]
    indices: Vec<usize>,
}

impl TrainableTokens {
    /// Rows `indices` of `table` (`[vocab, hidden]`), trainable, starting at their base values
    /// (PEFT's default `init_weights=True`). Errors on an index out of range or repeated.
    pub fn new(table: &Tensor<2>, indices: Vec<usize>) -> Result<Self, LoraError> {
        check_indices(&indices, table.dims()[0]).map_err(config_error)?;
        let idx = index_tensor(&indices, &table.device());
        let delta = table.clone().select(0, idx).detach();
        Ok(Self {
            delta: Param::from_tensor(delta).set_require_grad(true),
            indices,
        })
    }

    /// Saved rows `values` (`[n, hidden]`) for `indices` of a table of `vocab` rows and width
    /// `hidden`, trainable.
    pub fn from_values(
        values: Tensor<2>,
        indices: Vec<usize>,
        [vocab, hidden]: [usize; 2],
    ) -> Result<Self, LoraError> {
        check_indices(&indices, vocab).map_err(config_error)?;
        if values.dims() != [indices.len(), hidden] {
            return Err(LoraError::Layer {
                problem: format!(
                    "trainable_tokens_delta is {:?}, but {} token indices on a table of width \
                     {hidden} need [{}, {hidden}]",
                    values.dims(),
                    indices.len(),
                    indices.len()
                ),
            });
        }
        Ok(Self {
            delta: Param::from_tensor(values).set_require_grad(true),
            indices,
        })
    }

    /// The token ids whose rows this replaces, in the order of [`TrainableTokens::delta`]'s rows.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// `slots[v]`: 0 for a row left alone, `k + 1` for row `v = indices[k]`; and
    /// `[0; delta]`, so that `rows.select(0, slots[ids])` gives each id's replacement.
    fn slots(&self, vocab: usize, device: &burn::tensor::Device) -> Tensor<1, Int> {
        let mut slots = vec![0i64; vocab];
        for (k, &v) in self.indices.iter().enumerate() {
            slots[v] = k as i64 + 1;
        }
        Tensor::from_data(TensorData::new(slots, [vocab]), device)
    }

    fn padded_rows(&self) -> Tensor<2> {
        let delta = self.delta.val();
        let zero = Tensor::zeros([1, delta.dims()[1]], &delta.device());
        Tensor::cat(vec![zero, delta], 0)
    }

    /// The table with this adapter's rows in place, `[vocab, hidden]` (differentiable in
    /// [`TrainableTokens::delta`]).
    pub fn apply_table(&self, table: Tensor<2>) -> Tensor<2> {
        let [vocab, _] = table.dims();
        let slots = self.slots(vocab, &table.device());
        let keep = slots.clone().equal_elem(0).float().unsqueeze_dim::<2>(1);
        table * keep + self.padded_rows().select(0, slots)
    }

    /// Embedding lookup through the table with this adapter's rows in place, without building
    /// that table: `embedded` (the base lookup, `[n, hidden]`) with the rows of ids this adapter
    /// trains replaced. `ids`: `[n]`.
    pub fn apply_embedded(
        &self,
        embedded: Tensor<2>,
        ids: Tensor<1, Int>,
        vocab: usize,
    ) -> Tensor<2> {
        let slots = self.slots(vocab, &embedded.device()).select(0, ids);
        let keep = slots.clone().equal_elem(0).float().unsqueeze_dim::<2>(1);
        embedded * keep + self.padded_rows().select(0, slots)
    }

    /// The logits of a head whose table has this adapter's rows in place, from the base logits
    /// (`[n, vocab]`) and the head's input (`[n, hidden]`): the columns of the trained ids are
    /// recomputed with the trained rows.
    pub fn apply_logits(&self, logits: Tensor<2>, hidden: Tensor<2>) -> Tensor<2> {
        let [n, vocab] = logits.dims();
        let device = logits.device();
        let slots = self.slots(vocab, &device);
        let keep = slots.clone().equal_elem(0).float().unsqueeze_dim::<2>(0);
        let cols = hidden.matmul(self.delta.val().transpose());
        let cols = Tensor::cat(vec![Tensor::zeros([n, 1], &device), cols], 1);
        logits * keep + cols.select(1, slots)
    }
}

fn index_tensor(indices: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let v: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [indices.len()]), device)
}

/// The problem, unless `indices` are distinct rows of a table of `vocab` rows, at least one.
pub(crate) fn check_indices(indices: &[usize], vocab: usize) -> Result<(), String> {
    if indices.is_empty() {
        return Err("no token indices".to_string());
    }
    if let Some(i) = indices.iter().find(|&&i| i >= vocab) {
        return Err(format!("token index {i} is past the table's {vocab} rows"));
    }
    let mut seen = std::collections::BTreeSet::new();
    match indices.iter().find(|i| !seen.insert(**i)) {
        Some(i) => Err(format!("token index {i} is given twice")),
        None => Ok(()),
    }
}

fn config_error(problem: String) -> LoraError {
    LoraError::Config {
        field: "trainable_token_indices".into(),
        problem,
    }
}

/// The trainable tokens of one table: one [`TrainableTokens`] per named adapter, with which are
/// active, as [`crate::LoraAdapters`] keeps them for a linear. Empty for a table without any.
#[derive(Module, Debug, Default)]
pub struct TokenAdapters {
    adapters: Vec<TrainableTokens>,
    #[module(skip)]
    names: Vec<String>,
    #[module(skip)]
    active: Vec<bool>,
    #[module(skip)]
    disabled: bool,
}

impl TokenAdapters {
    /// Adds `tokens` under `name`, active. Errors if the name is taken.
    pub fn add(&mut self, name: &str, tokens: TrainableTokens) -> Result<(), LoraError> {
        if self.names.iter().any(|n| n == name) {
            return Err(LoraError::Layer {
                problem: format!("trainable tokens of an adapter named `{name}` already exist"),
            });
        }
        self.adapters.push(tokens);
        self.names.push(name.to_string());
        self.active.push(true);
        Ok(())
    }

    /// The tokens of adapter `name`.
    pub fn get(&self, name: &str) -> Option<&TrainableTokens> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.adapters[i])
    }

    /// The tokens of adapter `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut TrainableTokens> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&mut self.adapters[i])
    }

    /// Makes the named adapters active (names this table has no tokens for are ignored: the
    /// model-level call names adapters of every layer).
    pub fn set_active(&mut self, names: &[&str]) {
        for (flag, n) in self.active.iter_mut().zip(&self.names) {
            *flag = names.contains(&n.as_str());
        }
    }

    /// Turns every adapter off (`true`) or back on.
    pub fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    /// Removes every adapter (after their rows were merged into the table).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The adapters in effect now, in the order they were added. PEFT applies them in turn and
    /// refuses overlapping rows; so does [`TokenAdapters::check_disjoint`].
    pub fn active(&self) -> impl Iterator<Item = &TrainableTokens> {
        let on = !self.disabled;
        self.adapters
            .iter()
            .zip(&self.active)
            .filter(move |(_, a)| on && **a)
            .map(|(t, _)| t)
    }

    /// Whether any adapter is in effect.
    pub fn any_active(&self) -> bool {
        self.active().next().is_some()
    }

    /// Errors if two active adapters train the same row (PEFT: "only disjunct token indices
    /// are currently supported").
    pub fn check_disjoint(&self) -> Result<(), LoraError> {
        let mut seen = std::collections::BTreeSet::new();
        for t in self.active() {
            if let Some(i) = t.indices().iter().find(|i| !seen.insert(**i)) {
                return Err(LoraError::Config {
                    field: "trainable_token_indices".into(),
                    problem: format!("token {i} is trained by two active adapters"),
                });
            }
        }
        Ok(())
    }

    /// `table` (`[vocab, hidden]`) with the active adapters' rows in place.
    pub fn apply_table(&self, table: Tensor<2>) -> Tensor<2> {
        self.active().fold(table, |t, a| a.apply_table(t))
    }

    /// The lookup of `ids` (`[batch, len]`) in `table` with the active adapters' rows in place,
    /// `[batch, len, hidden]`.
    pub fn embed(&self, table: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let [vocab, h] = table.dims();
        let flat = ids.reshape([b * t]);
        let base = table.select(0, flat.clone());
        self.active()
            .fold(base, |x, a| a.apply_embedded(x, flat.clone(), vocab))
            .reshape([b, t, h])
    }

    /// Head logits with the active adapters' rows in place: `logits` `[n, vocab]` computed with
    /// the base table from `hidden` `[n, hidden]`.
    pub fn logits(&self, logits: Tensor<2>, hidden: Tensor<2>) -> Tensor<2> {
        self.active()
            .fold(logits, |l, a| a.apply_logits(l, hidden.clone()))
    }
}
