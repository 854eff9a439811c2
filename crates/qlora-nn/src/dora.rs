//! DoRA, weight-decomposed low-rank adaptation (Liu et al. 2024, "DoRA: Weight-Decomposed
//! Low-Rank Adaptation", arXiv:2402.09353), as PEFT 0.21 computes it (`use_dora=True`,
//! `DoraLinearLayer` / `DoraLinearVariant`).
//!
//! The adapted weight is split into a magnitude and a direction,
//! `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖` with the norm taken per output row, and the magnitude
//! `m` (`lora_magnitude_vector`, `[out]`) trains beside A and B. The norm is detached (the
//! paper's §4.3: treated as a constant, so the backward pass keeps no `[out, in]` weight
//! gradient), which PEFT does too. Its value starts as the norm itself, so a new adapter (B = 0)
//! leaves the layer's output unchanged.
//!
//! The forward pass never builds `W'`. As PEFT's, it adds to the running output `y`
//! (the base's `x·Wᵀ + b` and any adapters before this one)
//!
//! `y + (m/‖W + s·B·A‖ − 1) ⊙ (y − b) + (m/‖W + s·B·A‖) ⊙ s·B·A·x`,
//!
//! and while a dropout is on, `y − b` is `dropout(x)·Wᵀ` instead (the base's product of the
//! dropped input, one more product, as PEFT). For QDoRA (an NF4 base) the norm is that of the
//! dequantized weight; the base's product is the 4-bit kernel's, whose backward keeps only the
//! packed weight. The norm costs one dequantization and one `[out, r]·[r, in]` product per layer
//! and step, as in PEFT (which does the same per forward pass).
//!
//! Merging gives `W' = m/‖W + s·B·A‖ ⊙ (W + s·B·A)` and keeps the norm, which unmerging needs
//! (`W = W' · ‖W + s·B·A‖/m − s·B·A`).

use burn::module::Param;
use burn::tensor::Tensor;

use crate::{AdaptedLinear, LoraAdapter, LoraAdapters, LoraApplier};

impl LoraAdapter {
    /// `‖W + s·B·A‖` per output row of the base weight `w` (`[out, in]`), detached: `[out]`.
    pub fn dora_weight_norm(&self, w: Tensor<2>) -> Tensor<1> {
        let w = w.detach() + self.delta_weight().detach();
        let [out, _] = w.dims();
        w.square().sum_dim(1).sqrt().reshape([out]).detach()
    }

    /// DoRA's magnitude as it starts on the base weight `w` (`[out, in]`): the row norms of
    /// `W + s·B·A` (PEFT's `dora_init`; with B = 0 those of W). Makes this a DoRA adapter.
    pub fn init_magnitude(&mut self, w: Tensor<2>) {
        self.magnitude = Some(Param::from_tensor(self.dora_weight_norm(w)));
    }

    /// `m / ‖W + s·B·A‖`, `[out]`, for a DoRA adapter on the base weight `w` (`[out, in]`).
    fn dora_scale(&self, w: Tensor<2>) -> Option<Tensor<1>> {
        let m = self.magnitude.as_ref()?;
        Some(m.val() / self.dora_weight_norm(w))
    }

    /// The base weight `w` (`[out, in]`) with this adapter merged: `W + s·B·A`, or DoRA's
    /// `m/‖W + s·B·A‖ ⊙ (W + s·B·A)`; with the norm DoRA divided by.
    fn merged_with_norm(&self, w: Tensor<2>) -> (Tensor<2>, Option<Tensor<1>>) {
        let norm = self.is_dora().then(|| self.dora_weight_norm(w.clone()));
        let merged = w + self.delta_weight();
        match (&self.magnitude, &norm) {
            (Some(m), Some(n)) => {
                let scale = (m.val() / n.clone()).unsqueeze_dim::<2>(1);
                (merged * scale, norm)
            }
            _ => (merged, None),
        }
    }

    /// [`LoraAdapter::merged_with_norm`]'s weight, detached.
    pub(crate) fn merged_weight(&self, w: Tensor<2>) -> Tensor<2> {
        self.merged_with_norm(w).0.detach()
    }

    /// Merges into `w` (`[out, in]`) and keeps what unmerging needs.
    pub(crate) fn merge_into(&mut self, w: Tensor<2>) -> Tensor<2> {
        let (merged, norm) = self.merged_with_norm(w);
        self.merged_norm = norm.map(|n| n.into_data());
        merged.detach()
    }

    /// Takes this adapter out of `w` (`[out, in]`) again: `W' − s·B·A`, or DoRA's
    /// `W' · ‖·‖/m − s·B·A` with the norm kept at merge time.
    ///
    /// # Panics
    /// For a DoRA adapter that was not merged by [`LoraAdapter::merge_into`].
    pub(crate) fn unmerge_from(&mut self, w: Tensor<2>) -> Tensor<2> {
        let w = match &self.magnitude {
            Some(m) => {
                let norm = self
                    .merged_norm
                    .take()
                    .expect("a merged DoRA adapter keeps its weight norm");
                let norm = Tensor::<1>::from_data(norm, &w.device());
                w * (norm / m.val()).unsqueeze_dim::<2>(1)
            }
            None => w,
        };
        (w - self.delta_weight()).detach()
    }
}

/// A layer's base as the adapter updates read it: `x·Wᵀ` without the bias (for an input the
/// dropout changed), the dense weight `[out, in]` (for DoRA's norm), and the bias.
pub(crate) struct Base<'a, const D: usize> {
    /// `x·Wᵀ`, no bias.
    pub product: &'a dyn Fn(Tensor<D>) -> Tensor<D>,
    /// `W`, `[out, in]` (dequantized for a 4-bit base).
    pub weight: &'a dyn Fn() -> Tensor<2>,
    /// The bias, `[out]`.
    pub bias: Option<Tensor<1>>,
}

/// `y` plus the update of every active, unmerged adapter on input `x`, in order: `s·B·A·x` for
/// LoRA, DoRA's (see the module docs) for a DoRA adapter. `y` is the base's output with bias.
pub(crate) fn add_updates<const D: usize>(
    adapters: &LoraAdapters,
    mut y: Tensor<D>,
    x: Tensor<D>,
    base: Base<'_, D>,
) -> Tensor<D> {
    let mut weight = None;
    for (_, a) in adapters.unmerged_active() {
        if !a.is_dora() {
            y = y + a.forward(x.clone());
            continue;
        }
        let w = weight.get_or_insert_with(|| (base.weight)()).clone();
        let scale: Tensor<D> = a.dora_scale(w).expect("a DoRA adapter").unsqueeze();
        let (xd, base_result) = match a.dropout_now(&x.device()) {
            Some((prob, seed)) => {
                let xd = qlora_fused::seeded_dropout(x.clone(), prob, seed);
                (xd.clone(), (base.product)(xd))
            }
            None => (
                x.clone(),
                match &base.bias {
                    Some(b) => y.clone() - b.clone().unsqueeze(),
                    None => y.clone(),
                },
            ),
        };
        let lora = a.forward_dropped(xd);
        y = y + scale.clone().sub_scalar(1.0) * base_result + scale * lora;
    }
    y
}

/// The dense weight `w` (`[out, in]`) with the named adapters merged in order (the norms kept
/// for unmerging).
pub(crate) fn merge_all(adapters: &mut LoraAdapters, names: &[String], w: Tensor<2>) -> Tensor<2> {
    names.iter().fold(w, |w, n| {
        adapters.get_mut(n).expect("a listed adapter").merge_into(w)
    })
}

/// The dense weight `w` with the named adapters taken out, the last merged first.
pub(crate) fn unmerge_all(
    adapters: &mut LoraAdapters,
    names: &[String],
    w: Tensor<2>,
) -> Tensor<2> {
    names.iter().rev().fold(w, |w, n| {
        adapters
            .get_mut(n)
            .expect("a listed adapter")
            .unmerge_from(w)
    })
}

impl AdaptedLinear {
    /// The base weight as the adapters read it, `[out, in]` (an NF4 base dequantized); `None`
    /// for a layer that takes no adapter.
    pub fn base_weight(&self) -> Option<Tensor<2>> {
        match self {
            AdaptedLinear::Lora(l) => Some(l.base.weight.val().transpose()),
            AdaptedLinear::QLora(l) => Some(qlora_backend::nf4_dequantize(&l.base)),
            AdaptedLinear::Frozen(_) | AdaptedLinear::Trained(_) => None,
        }
    }

    /// Makes the adapter `name` a DoRA adapter, its magnitude the row norms of the base weight
    /// plus its update, as PEFT's `dora_init` (after any PiSSA / LoftQ initialisation and the
    /// quantization: QDoRA's norm is the dequantized weight's). No-op without that adapter.
    pub(crate) fn init_dora(&mut self, name: &str) {
        let Some(w) = self.base_weight() else {
            return;
        };
        if let Some(a) = self.adapters_mut().and_then(|a| a.get_mut(name)) {
            a.init_magnitude(w);
        }
    }
}

impl LoraApplier {
    /// `layer` with its new adapter made a DoRA adapter when the config says `use_dora`.
    pub(crate) fn with_dora(&self, mut layer: AdaptedLinear) -> AdaptedLinear {
        if self.config().is_some_and(|c| c.use_dora) {
            layer.init_dora(self.adapter_name());
        }
        layer
    }
}
