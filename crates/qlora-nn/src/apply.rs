//! Applying a [`LoraConfig`] to a model as it is built: the model's constructor passes each of
//! its linear layers, with its dotted path, through a [`LoraApplier`] and stores the
//! [`AdaptedLinear`] it gets back.
//!
//! Burn 0.22 modules cannot change the type of a field after construction (`ModuleMapper` maps
//! tensors only), so the convention is: a model that wants LoRA declares its linears as
//! `AdaptedLinear` and builds them through the applier. PEFT's rules decide which paths get
//! adapters (see [`LoraMatcher`]); every base weight is frozen, and with a [`QuantConfig`] every
//! linear is stored in NF4 (as bitsandbytes' `Linear4bit` does for the whole model).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};
use qlora_backend::QuantConfig;

use crate::{LoraAdapter, LoraBias, LoraConfig, LoraError, LoraLinear, LoraMatcher, QLoraLinear};

/// A linear layer after a config was applied: frozen as it was, LoRA over a float base, or
/// QLoRA over an NF4 base (with or without adapters).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AdaptedLinear {
    /// Not targeted, float: frozen.
    Frozen(Linear),
    /// LoRA over a frozen float weight.
    Lora(LoraLinear),
    /// An NF4 weight, with adapters when targeted.
    QLora(QLoraLinear),
}

impl AdaptedLinear {
    /// `y = base(x) (+ Σ Δy)`.
    ///
    /// - `x`: `[..., in_features]`
    /// - returns `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            AdaptedLinear::Frozen(l) => l.forward(x),
            AdaptedLinear::Lora(l) => l.forward(x),
            AdaptedLinear::QLora(l) => l.forward(x),
        }
    }

    /// The adapter called `name`, if this layer has one.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter> {
        match self {
            AdaptedLinear::Frozen(_) => None,
            AdaptedLinear::Lora(l) => l.lora.get(name),
            AdaptedLinear::QLora(l) => l.lora.get(name),
        }
    }
}

/// Builds the linears of a model under a [`LoraConfig`] (see the module docs).
#[derive(Debug, Clone)]
pub struct LoraApplier {
    config: LoraConfig,
    matcher: LoraMatcher,
    quantize: Option<QuantConfig>,
    adapter_name: String,
    device: Device,
}

impl LoraApplier {
    /// An applier adding adapters named `"default"` (PEFT's default name). With `quantize`,
    /// base weights are stored in NF4 (QLoRA); without, they stay float (LoRA).
    ///
    /// Errors on a config that does not validate, or that asks for `modules_to_save`
    /// (not implemented).
    pub fn new(
        config: LoraConfig,
        quantize: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, LoraError> {
        config.validate("<config>")?;
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            return Err(LoraError::Unsupported {
                path: "<config>".into(),
                field: "modules_to_save".into(),
                value: format!("{:?}", config.modules_to_save),
                why: "fully trained module copies are not implemented".into(),
            });
        }
        let matcher =
            LoraMatcher::new(&config).map_err(|(field, problem)| LoraError::BadValue {
                path: "<config>".into(),
                field: field.into(),
                problem,
            })?;
        Ok(Self {
            config,
            matcher,
            quantize,
            adapter_name: "default".into(),
            device: device.clone(),
        })
    }

    /// Uses `name` for the adapters this applier adds.
    pub fn with_adapter_name(mut self, name: &str) -> Self {
        self.adapter_name = name.to_string();
        self
    }

    /// The config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The layer at `path` (dotted module path, as PEFT matches it). `is_output_head` marks the
    /// model's output projection, which `"all-linear"` leaves alone.
    pub fn linear(
        &self,
        path: &str,
        base: Linear,
        is_output_head: bool,
    ) -> Result<AdaptedLinear, LoraError> {
        let targeted = self.matcher.is_target(path, true, is_output_head);
        let [d_in, d_out] = base.weight.dims();
        let bias_trains = match self.config.bias {
            LoraBias::None => false,
            LoraBias::LoraOnly => targeted,
            LoraBias::All => true,
        };
        let adapter = || {
            LoraAdapter::new(
                [d_in, d_out],
                self.matcher.rank(path),
                self.matcher.scaling(path),
                self.config.lora_dropout,
                self.config.init_lora_weights,
                &self.device,
            )
        };
        let mut layer = match (self.quantize, targeted) {
            (None, false) => return Ok(AdaptedLinear::Frozen(base.no_grad())),
            (None, true) => {
                let mut l = LoraLinear::new(base);
                l.lora.add(&self.adapter_name, adapter());
                AdaptedLinear::Lora(l)
            }
            (Some(q), _) => {
                let mut l = QLoraLinear::quantize(path, base, q)?;
                if targeted {
                    l.lora.add(&self.adapter_name, adapter());
                }
                AdaptedLinear::QLora(l)
            }
        };
        if bias_trains {
            match &mut layer {
                AdaptedLinear::Lora(l) => {
                    l.base.bias = l.base.bias.take().map(|b| b.set_require_grad(true))
                }
                AdaptedLinear::QLora(l) => l.bias = l.bias.take().map(|b| b.set_require_grad(true)),
                AdaptedLinear::Frozen(_) => {}
            }
        }
        Ok(layer)
    }
}
