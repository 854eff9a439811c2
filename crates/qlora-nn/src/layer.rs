//! [`LoraLinear`] (a frozen float linear plus adapters) and [`QLoraLinear`] (a frozen NF4 linear
//! plus adapters): `y = base(x) + Σ_active scaling · B·A·dropout(x)`, or DoRA's update for a DoRA
//! adapter ([`crate::dora`]).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use qlora_backend::{
    Nf4Error, Nf4Weight, QuantConfig, QuantizedTensor, nf4_dequantize, nf4_linear,
    nf4_linear_output_unused,
};
use qlora_fused::nf4_lora_linear;

use crate::dora::{Base, add_updates, merge_all, unmerge_all};
use crate::{LoraAdapter, LoraAdapters, LoraError};

/// Adds `adapter` under `name` if its `[in, out]` equals the layer's.
fn add_checked(
    adapters: &mut LoraAdapters,
    dims: [usize; 2],
    name: &str,
    adapter: LoraAdapter,
) -> Result<(), LoraError> {
    let (found_in, found_out) = (adapter.in_features(), adapter.out_features());
    if [found_in, found_out] != dims {
        return Err(LoraError::AdapterShape {
            adapter: name.to_string(),
            expected_in: dims[0],
            expected_out: dims[1],
            found_in,
            found_out,
        });
    }
    adapters.add(name, adapter);
    Ok(())
}

/// A frozen float linear layer with LoRA adapters.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// The frozen base layer (Burn layout: weight `[in, out]`).
    pub base: Linear,
    /// The adapters.
    pub lora: LoraAdapters,
}

impl LoraLinear {
    /// Wraps `base`, freezing it, with no adapter yet.
    pub fn new(base: Linear) -> Self {
        Self {
            base: base.no_grad(),
            lora: LoraAdapters::empty(),
        }
    }

    /// The width of the input.
    pub fn in_features(&self) -> usize {
        self.base.weight.dims()[0]
    }

    /// The width of the output.
    pub fn out_features(&self) -> usize {
        self.base.weight.dims()[1]
    }

    /// Adds an adapter (for example one read with [`crate::PeftAdapter`]); errors if its shape
    /// does not fit this layer.
    pub fn add_adapter(&mut self, name: &str, adapter: LoraAdapter) -> Result<(), LoraError> {
        let dims = [self.in_features(), self.out_features()];
        add_checked(&mut self.lora, dims, name, adapter)
    }

    /// `y = base(x) + Σ Δy`.
    ///
    /// - `x`: `[..., in_features]`
    /// - returns `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = self.base.forward(x.clone());
        let unbiased = Linear {
            weight: self.base.weight.clone(),
            bias: None,
        };
        let base = Base {
            product: &|x| unbiased.forward(x),
            weight: &|| self.base.weight.val().transpose(),
            bias: self.base.bias.as_ref().map(|b| b.val()),
        };
        add_updates(&self.lora, y, x, base)
    }

    /// Adds the active, not yet merged adapters into the base weight (`W' = W + s·B·A`; DoRA's
    /// `W' = m/‖W + s·B·A‖ ⊙ (W + s·B·A)`, [`crate::dora`]) and
    /// keeps them, marked merged, so that [`LoraLinear::unmerge`] can take them out again
    /// (PEFT's `merge`). The output is unchanged up to f32 rounding; the forward pass is then
    /// the base layer alone.
    pub fn merge(&mut self) {
        let names: Vec<String> = self.lora.unmerged_active().map(|(n, _)| n.into()).collect();
        let w = merge_all(&mut self.lora, &names, self.base.weight.val().transpose());
        // Detached: merging on an autodiff device must not leave a graph behind the weight.
        self.base.weight = Param::from_tensor(w.transpose().detach()).set_require_grad(false);
        self.lora.set_merged(&names, true);
    }

    /// Subtracts the merged adapters from the base weight again (PEFT's `unmerge`): the base
    /// weight is back up to f32 rounding.
    pub fn unmerge(&mut self) {
        let names = self.lora.merge_order().to_vec();
        let w = unmerge_all(&mut self.lora, &names, self.base.weight.val().transpose());
        self.base.weight = Param::from_tensor(w.transpose().detach()).set_require_grad(false);
        self.lora.set_merged(&names, false);
    }

    /// Adds the active adapters into the base weight (`W' = W + s·B·A`) and removes them:
    /// PEFT's `merge_and_unload` for one layer. Exact up to f32 rounding.
    pub fn merge_and_unload(mut self) -> Linear {
        self.merge();
        let mut base = self.base;
        base.weight = base.weight.set_require_grad(false);
        base
    }
}

/// A frozen 4-bit (NF4 + double quantization) linear layer with LoRA adapters: the QLoRA layer.
#[derive(Module, Debug)]
pub struct QLoraLinear {
    /// The frozen base weight, PyTorch layout `[out, in]`.
    pub base: Nf4Weight,
    /// The frozen base bias, `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapters.
    pub lora: LoraAdapters,
}

impl QLoraLinear {
    /// Quantizes a Burn `Linear` (weight `[in, out]`) to NF4 with `config`; `name` is used in
    /// errors. The bias stays float and frozen.
    pub fn quantize(name: &str, base: Linear, config: QuantConfig) -> Result<Self, Nf4Error> {
        let w = Nf4Weight::quantize(name, base.weight.val().transpose(), config)?;
        Ok(Self {
            base: w,
            bias: base.bias.map(|b| b.set_require_grad(false)),
            lora: LoraAdapters::empty(),
        })
    }

    /// An already-quantized weight (for example from a bnb-4bit checkpoint) and bias.
    pub fn from_quantized(
        name: &str,
        weight: &QuantizedTensor,
        bias: Option<Tensor<1>>,
        device: &burn::tensor::Device,
    ) -> Result<Self, Nf4Error> {
        Ok(Self {
            base: Nf4Weight::from_quantized(weight, name, device)?,
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            lora: LoraAdapters::empty(),
        })
    }

    /// The width of the input.
    pub fn in_features(&self) -> usize {
        self.base.in_features()
    }

    /// The width of the output.
    pub fn out_features(&self) -> usize {
        self.base.out_features()
    }

    /// Adds an adapter; errors if its shape does not fit this layer.
    pub fn add_adapter(&mut self, name: &str, adapter: LoraAdapter) -> Result<(), LoraError> {
        let dims = [self.in_features(), self.out_features()];
        add_checked(&mut self.lora, dims, name, adapter)
    }

    /// `y = x · dequant(W)ᵀ + b + Σ Δy`; the backward through the base keeps only the packed
    /// weight. With one adapter in effect (the training case) the base and the adapter are one
    /// op, [`qlora_fused::nf4_lora_linear`]: the adapter's product is accumulated into the
    /// base's output, and its backward pass into the base's input gradient.
    ///
    /// - `x`: `[..., in_features]`
    /// - returns `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_base(x, true)
    }

    /// [`QLoraLinear::forward`] for a pass that reads only the output's gradient, never its
    /// values (the last linear of a checkpointed block's recomputation,
    /// [`crate::recomputing`]): the base's product is not computed (zeros with its backward,
    /// [`qlora_backend::nf4_linear_output_unused`]); the adapters' updates are.
    pub fn forward_output_unused<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_base(x, false)
    }

    /// The forward pass, with the base's product computed (`base`) or only its backward.
    fn forward_base<const D: usize>(&self, x: Tensor<D>, base: bool) -> Tensor<D> {
        // One adapter: the bias is read after its dropout seed is drawn (a bias Burn initialises
        // lazily draws from the same generator at its first read); several: before the
        // adapters' seeds. The order of every earlier release, so seeded runs repeat.
        let bias = || self.bias.as_ref().map(|b| b.val());
        let mut in_effect = self.lora.unmerged_active();
        if let (Some((_, adapter)), None) = (in_effect.next(), in_effect.next()) {
            // DoRA without a dropout in effect is `m/‖W + s·B·A‖ ⊙ (x·Wᵀ + s·B·A·x) + b`: the
            // fused op's output scaled (its value is then read, so the base's product is
            // computed). With a dropout, DoRA multiplies the base's product of the dropped
            // input, and the composed path below does.
            if !adapter.is_dora() || !adapter.dropout_active(&x.device()) {
                let lora = adapter.factors(&x.device());
                let y = nf4_lora_linear(x, &self.base, lora, base || adapter.is_dora());
                let y = match adapter.magnitude.as_ref() {
                    Some(m) => {
                        let norm = adapter.dora_weight_norm(nf4_dequantize(&self.base));
                        y * (m.val() / norm).unsqueeze()
                    }
                    None => y,
                };
                // A trained bias (PEFT's `bias="all"`) gets its gradient through this sum.
                return match bias() {
                    Some(b) => y + b.unsqueeze(),
                    None => y,
                };
            }
        }
        // DoRA reads the base's output: it is computed whenever a DoRA adapter is in effect.
        let dora = self.lora.unmerged_active().any(|(_, a)| a.is_dora());
        let mut y = if base || dora {
            nf4_linear(x.clone(), &self.base)
        } else {
            nf4_linear_output_unused(x.clone(), &self.base)
        };
        let bias = bias();
        if let Some(b) = &bias {
            y = y + b.clone().unsqueeze();
        }
        let base = Base {
            product: &|x| nf4_linear(x, &self.base),
            weight: &|| nf4_dequantize(&self.base),
            bias,
        };
        add_updates(&self.lora, y, x, base)
    }

    /// Merges the active, not yet merged adapters into the NF4 weight in place, keeping them
    /// (marked merged) for [`QLoraLinear::unmerge`]: `dequant(W) + s·B·A` quantized again with
    /// the weight's own configuration, as PEFT does for bitsandbytes' 4-bit layers. **Lossy**:
    /// every merge and unmerge rounds the weight to the 4-bit grid again (up to half a
    /// quantization step per weight), so outputs differ slightly from the unmerged layer's.
    pub fn merge(&mut self, name: &str) -> Result<(), Nf4Error> {
        let names: Vec<String> = self.lora.unmerged_active().map(|(n, _)| n.into()).collect();
        if names.is_empty() {
            return Ok(());
        }
        let w = merge_all(&mut self.lora, &names, nf4_dequantize(&self.base));
        self.base = Nf4Weight::quantize(name, w, self.base.layout().config())?;
        self.lora.set_merged(&names, true);
        Ok(())
    }

    /// Takes the merged adapters out of the NF4 weight again (`dequant(W') - s·B·A`, quantized
    /// again: lossy, see [`QLoraLinear::merge`]).
    pub fn unmerge(&mut self, name: &str) -> Result<(), Nf4Error> {
        let names = self.lora.merge_order().to_vec();
        if names.is_empty() {
            return Ok(());
        }
        let w = unmerge_all(&mut self.lora, &names, nf4_dequantize(&self.base));
        self.base = Nf4Weight::quantize(name, w, self.base.layout().config())?;
        self.lora.set_merged(&names, false);
        Ok(())
    }

    /// Merges the active adapters into the weight and quantizes it again: `dequant(W) + s·B·A`
    /// re-quantized with `config`. **Lossy**: the merged weight is rounded to the 4-bit grid
    /// again, so its outputs differ from the unmerged layer's by up to half a quantization step
    /// per weight; keep the adapter separate (or merge into a float copy) where that matters.
    pub fn merge_into_nf4(self, name: &str, config: QuantConfig) -> Result<Self, Nf4Error> {
        let w = self.merged_dense();
        Ok(Self {
            base: Nf4Weight::quantize(name, w, config)?,
            bias: self.bias,
            lora: LoraAdapters::empty(),
        })
    }

    /// Merges the active adapters into a float copy of the weight: a plain Burn `Linear`
    /// (`[in, out]`) with the dequantized base plus `s·B·A`.
    pub fn merge_to_linear(self) -> Linear {
        let w = self.merged_dense().transpose();
        Linear {
            weight: Param::from_tensor(w).set_require_grad(false),
            bias: self.bias,
        }
    }

    fn merged_dense(&self) -> Tensor<2> {
        self.lora
            .unmerged_active()
            .fold(nf4_dequantize(&self.base), |w, (_, a)| a.merged_weight(w))
    }
}
