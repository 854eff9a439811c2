//! [`LoraAdapter`]: one low-rank update `Δy = s · B·A·dropout(x)`, and [`LoraAdapters`], the
//! named adapters of one layer.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::InitLoraWeights;

/// One LoRA adapter of a linear layer (Hu et al. 2021): `Δy = scaling · (dropout(x) · Aᵀ) · Bᵀ`.
///
/// `A` and `B` are stored in PEFT's (PyTorch) layout, `A` `[r, in]` and `B` `[out, r]`, so that
/// adapter files map one to one.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `lora_A.weight`, `[r, in_features]`.
    pub lora_a: Param<Tensor<2>>,
    /// `lora_B.weight`, `[out_features, r]`.
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's `lora_magnitude_vector`, `[out_features]`: `Some` for a DoRA adapter
    /// ([`crate::dora`]), `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter input (training only).
    pub dropout: Dropout,
    /// `lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA).
    pub scaling: f64,
    /// DoRA: the weight norm `‖W + s·B·A‖` per row taken when this adapter was merged into its
    /// base, which unmerging divides out again (PEFT caches it too: the merged weight alone no
    /// longer tells it).
    #[module(skip)]
    pub(crate) merged_norm: Option<TensorData>,
}

impl LoraAdapter {
    /// A new adapter, initialised as PEFT's `init_lora_weights` says:
    /// - `Default`: `A ~ U(-1/√in, 1/√in)` (Kaiming-uniform with a = √5), `B = 0`;
    /// - `Gaussian`: `A ~ N(0, (1/r)²)` (PEFT's `std = 1/r`), `B = 0`;
    /// - `Random`: both Kaiming-uniform (`B ~ U(-1/√r, 1/√r)`), so the adapter starts non-zero.
    ///
    /// # Panics
    /// With `Pissa` or `Loftq`, which need the layer's weight: [`crate::LoraApplier`] makes
    /// those.
    pub fn new(
        [in_features, out_features]: [usize; 2],
        r: usize,
        scaling: f64,
        dropout: f64,
        init: InitLoraWeights,
        device: &Device,
    ) -> Self {
        assert!(r > 0, "LoRA rank must be at least 1");
        assert!(
            !matches!(
                init,
                InitLoraWeights::Pissa { .. } | InitLoraWeights::Loftq { .. }
            ),
            "PiSSA and LoftQ adapters are made from their layer's weight (LoraApplier::linear)"
        );
        let kaiming = |fan_in: usize| {
            Distribution::Uniform(-1.0 / (fan_in as f64).sqrt(), 1.0 / (fan_in as f64).sqrt())
        };
        let a = match init {
            InitLoraWeights::Gaussian => Tensor::<2>::random(
                [r, in_features],
                Distribution::Normal(0.0, 1.0 / r as f64),
                device,
            ),
            _ => Tensor::<2>::random([r, in_features], kaiming(in_features), device),
        };
        let b = match init {
            InitLoraWeights::Random => Tensor::<2>::random([out_features, r], kaiming(r), device),
            _ => Tensor::<2>::zeros([out_features, r], device),
        };
        Self::from_weights(a, b, scaling, dropout)
    }

    /// An adapter from given `A` `[r, in]` and `B` `[out, r]` (for example read from a PEFT file).
    ///
    /// # Panics
    /// If the ranks of `A` and `B` differ.
    pub fn from_weights(lora_a: Tensor<2>, lora_b: Tensor<2>, scaling: f64, dropout: f64) -> Self {
        let [r, _] = lora_a.dims();
        let [_, rb] = lora_b.dims();
        assert_eq!(r, rb, "lora_A has rank {r} but lora_B has rank {rb}");
        Self {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            magnitude: None,
            dropout: DropoutConfig::new(dropout).init(),
            scaling,
            merged_norm: None,
        }
    }

    /// The same adapter as a DoRA adapter with `magnitude` (`lora_magnitude_vector`,
    /// `[out_features]`) trained beside A and B ([`crate::dora`]).
    ///
    /// # Panics
    /// If `magnitude` does not have one value per output feature.
    pub fn with_magnitude(mut self, magnitude: Tensor<1>) -> Self {
        assert_eq!(
            magnitude.dims(),
            [self.out_features()],
            "lora_magnitude_vector has one value per output feature"
        );
        self.magnitude = Some(Param::from_tensor(magnitude));
        self
    }

    /// Whether this is a DoRA adapter (it has a magnitude vector).
    pub fn is_dora(&self) -> bool {
        self.magnitude.is_some()
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    /// The width of the layer's input (`A` is `[r, in_features]`).
    pub fn in_features(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// The width of the layer's output (`B` is `[out_features, r]`).
    pub fn out_features(&self) -> usize {
        self.lora_b.dims()[0]
    }

    /// The update `Δy = s·B·A·dropout(x)` (plain LoRA's; a DoRA adapter's update also reads
    /// the base layer: the layers compute it, [`crate::dora`]).
    ///
    /// - `x`: `[..., in_features]`
    /// - returns `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_dropped(self.dropped(x))
    }

    /// `s·B·A·x` of an input the dropout was already applied to (or that takes none).
    pub(crate) fn forward_dropped<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (in_features, out_features) = (self.in_features(), self.out_features());
        let rows = dims[..D - 1].iter().product::<usize>();
        let x2: Tensor<2> = x.reshape([rows, in_features]);
        // The scaling is applied to the rank-r intermediate, not to the [rows, out] update:
        // the same product, a pass over r columns instead of `out` (forward and backward).
        let h = x2
            .matmul(self.lora_a.val().transpose())
            .mul_scalar(self.scaling);
        let delta = h.matmul(self.lora_b.val().transpose());
        let mut out = dims;
        out[D - 1] = out_features;
        delta.reshape(out)
    }

    /// The adapter as [`qlora_fused::nf4_lora_linear`] takes it, for an input on `device`:
    /// the dropout is on while training, as in [`LoraAdapter::forward`], with the seed drawn
    /// now (so the fused and the composed forward draw the same seeds, in the same order).
    pub fn factors(&self, device: &Device) -> qlora_fused::LoraFactors {
        qlora_fused::LoraFactors {
            lora_a: self.lora_a.val(),
            lora_b: self.lora_b.val(),
            scaling: self.scaling,
            dropout: self.dropout_now(device),
        }
    }

    /// `(probability, seed)` of the dropout for an input on `device`, the seed drawn now:
    /// `Some` while training (an autodiff device, the layer not frozen, a non-zero probability).
    pub(crate) fn dropout_now(&self, device: &Device) -> Option<(f64, u64)> {
        self.dropout_active(device).then(|| {
            (
                self.dropout.prob,
                crate::dropout_seed_rows(device, self.in_features()),
            )
        })
    }

    /// Whether the dropout is on for an input on `device` (no seed drawn).
    pub(crate) fn dropout_active(&self, device: &Device) -> bool {
        let d = &self.dropout;
        d.training.is_enabled() && device.is_autodiff() && d.prob > 0.0
    }

    /// `dropout(x)` while training (an autodiff device, the layer not frozen), else `x`: as
    /// Burn's `Dropout`, with a mask drawn from a seed the device's generator gives
    /// ([`qlora_fused::seeded_dropout`]), so the backward pass draws it again instead of
    /// keeping it, and a run seeded alike draws alike.
    fn dropped<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.dropout_now(&x.device()) {
            Some((prob, seed)) => qlora_fused::seeded_dropout(x, prob, seed),
            None => x,
        }
    }

    /// `scaling · B · A`, `[out, in]`: what merging plain LoRA adds to the base weight (a DoRA
    /// adapter also rescales the rows, [`crate::dora`]).
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scaling)
    }
}

/// The named adapters of one layer, which of them are active, and whether all are disabled.
#[derive(Module, Debug)]
pub struct LoraAdapters {
    /// The adapters, in the order they were added.
    pub adapters: Vec<LoraAdapter>,
    #[module(skip)]
    names: Vec<String>,
    #[module(skip)]
    active: Vec<bool>,
    #[module(skip)]
    disabled: bool,
    /// Whether each adapter is merged into the base weight (it then adds nothing in forward).
    #[module(skip)]
    merged: Vec<bool>,
    /// The merged adapters' names in the order they were merged (unmerging takes the last
    /// first, as PEFT's `merged_adapters`: DoRA merges do not commute).
    #[module(skip)]
    merge_order: Vec<String>,
}

impl LoraAdapters {
    /// No adapter.
    pub fn empty() -> Self {
        Self {
            adapters: Vec::new(),
            names: Vec::new(),
            active: Vec::new(),
            disabled: false,
            merged: Vec::new(),
            merge_order: Vec::new(),
        }
    }

    /// Adds an adapter under `name` and makes it active (PEFT's `add_adapter`).
    ///
    /// # Panics
    /// If an adapter of that name exists, or its shape differs from the others'.
    pub fn add(&mut self, name: &str, adapter: LoraAdapter) {
        assert!(
            !self.names.iter().any(|n| n == name),
            "an adapter named `{name}` already exists"
        );
        if let Some(first) = self.adapters.first() {
            assert_eq!(
                [first.in_features(), first.out_features()],
                [adapter.in_features(), adapter.out_features()],
                "adapter `{name}` has another shape than the layer's"
            );
        }
        self.adapters.push(adapter);
        self.names.push(name.to_string());
        self.active.push(true);
        self.merged.push(false);
    }

    /// Makes exactly the named adapters active.
    ///
    /// # Panics
    /// If a name is unknown.
    pub fn set_active(&mut self, names: &[&str]) {
        for n in names {
            assert!(
                self.names.iter().any(|m| m == n),
                "no adapter named `{n}` (have {:?})",
                self.names
            );
        }
        for (flag, n) in self.active.iter_mut().zip(&self.names) {
            *flag = names.contains(&n.as_str());
        }
    }

    /// Removes the named adapter; returns it if it existed.
    ///
    /// # Panics
    /// If the adapter is merged into the base weight (unmerge the layer first).
    pub fn delete(&mut self, name: &str) -> Option<LoraAdapter> {
        let i = self.names.iter().position(|n| n == name)?;
        assert!(
            !self.merged[i],
            "adapter `{name}` is merged into the base weight: unmerge before deleting it"
        );
        self.names.remove(i);
        self.active.remove(i);
        self.merged.remove(i);
        Some(self.adapters.remove(i))
    }

    /// Turns every adapter off (`true`) or back on (`false`) without forgetting which are active.
    /// Merged adapters are part of the base weight and stay in effect: unmerge them first.
    pub fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    /// The adapter named `name`.
    pub fn get(&self, name: &str) -> Option<&LoraAdapter> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.adapters[i])
    }

    /// The adapter named `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut LoraAdapter> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&mut self.adapters[i])
    }

    /// The adapter names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The adapters that contribute to the output now.
    pub fn active(&self) -> impl Iterator<Item = (&str, &LoraAdapter)> {
        let on = !self.disabled;
        self.names
            .iter()
            .zip(&self.adapters)
            .zip(&self.active)
            .filter(move |(_, a)| on && **a)
            .map(|((n, a), _)| (n.as_str(), a))
    }

    /// The active adapters not merged into the base weight: those the forward pass adds.
    pub fn unmerged_active(&self) -> impl Iterator<Item = (&str, &LoraAdapter)> {
        self.active().filter(|(n, _)| !self.is_merged(n))
    }

    /// The names of the adapters merged into the base weight, in the order they were merged.
    pub fn merge_order(&self) -> &[String] {
        &self.merge_order
    }

    /// The adapters merged into the base weight.
    pub fn merged(&self) -> impl Iterator<Item = (&str, &LoraAdapter)> {
        self.names
            .iter()
            .zip(&self.adapters)
            .zip(&self.merged)
            .filter(|(_, m)| **m)
            .map(|((n, a), _)| (n.as_str(), a))
    }

    /// Whether the adapter `name` is merged into the base weight.
    pub fn is_merged(&self, name: &str) -> bool {
        self.names
            .iter()
            .position(|n| n == name)
            .is_some_and(|i| self.merged[i])
    }

    /// Records the adapters `names` as merged (`true`) or not; the layer changes its weight.
    pub(crate) fn set_merged(&mut self, names: &[String], merged: bool) {
        for (flag, n) in self.merged.iter_mut().zip(&self.names) {
            if names.contains(n) {
                *flag = merged;
            }
        }
        self.merge_order.retain(|n| !names.contains(n));
        if merged {
            self.merge_order.extend(names.iter().cloned());
        }
    }
}
