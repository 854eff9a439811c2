//! [`LoraLinearConfig`] and [`QLoraLinearConfig`]: Burn-style configs that build a LoRA or QLoRA
//! layer with a freshly initialised base (for models built from a config before their weights
//! are loaded).

use burn::config::Config;
use burn::nn::LinearConfig;
use burn::tensor::Device;
use qlora_backend::{Nf4Error, QuantConfig};

use crate::{InitLoraWeights, LoraAdapter, LoraLinear, QLoraLinear};

/// A linear layer with one LoRA adapter named `"default"`.
#[derive(Config, Debug)]
pub struct LoraLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Adapter rank.
    #[config(default = 8)]
    pub r: usize,
    /// `scaling = lora_alpha / r`.
    #[config(default = 8.0)]
    pub lora_alpha: f64,
    /// Dropout on the adapter input (training only).
    #[config(default = 0.0)]
    pub lora_dropout: f64,
    /// `scaling = lora_alpha / sqrt(r)` instead.
    #[config(default = false)]
    pub use_rslora: bool,
    /// Whether the base layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl LoraLinearConfig {
    fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    fn adapter(&self, device: &Device) -> LoraAdapter {
        LoraAdapter::new(
            [self.d_input, self.d_output],
            self.r,
            self.scaling(),
            self.lora_dropout,
            InitLoraWeights::Default,
            device,
        )
    }

    /// A frozen, Burn-initialised float base with a `"default"` adapter (A Kaiming-uniform, B = 0).
    pub fn init(&self, device: &Device) -> LoraLinear {
        let mut l = LoraLinear::new(
            LinearConfig::new(self.d_input, self.d_output)
                .with_bias(self.bias)
                .init(device),
        );
        l.lora.add("default", self.adapter(device));
        l
    }

    /// The same with the base quantized to NF4 with `quant` (see [`QLoraLinearConfig`]).
    pub fn init_quantized(
        &self,
        quant: QuantConfig,
        device: &Device,
    ) -> Result<QLoraLinear, Nf4Error> {
        let base = LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .init(device);
        let mut l = QLoraLinear::quantize("lora_linear.weight", base, quant)?;
        l.lora.add("default", self.adapter(device));
        Ok(l)
    }
}

/// A QLoRA layer: NF4 + double-quantized base (QLoRA's recipe) with one `"default"` adapter.
#[derive(Config, Debug)]
pub struct QLoraLinearConfig {
    /// The layer and adapter.
    pub lora: LoraLinearConfig,
    /// Blocksize of the 4-bit quantization (64 in QLoRA).
    #[config(default = 64)]
    pub blocksize: usize,
    /// Double-quantize the absmax (QLoRA's default).
    #[config(default = true)]
    pub double_quant: bool,
}

impl QLoraLinearConfig {
    /// A QLoRA layer with a Burn-initialised base quantized to NF4.
    ///
    /// # Panics
    /// If `blocksize` is not a power of two from 32 to 4096.
    pub fn init(&self, device: &Device) -> QLoraLinear {
        let quant = QuantConfig {
            quant_type: qlora_backend::QuantType::Nf4,
            blocksize: qlora_nf4::Blocksize::new(self.blocksize, "QLoraLinearConfig")
                .unwrap_or_else(|e| panic!("QLoraLinearConfig: {e}")),
            double_quant: self.double_quant,
            absmax_rounding: Default::default(),
        };
        self.lora.init_quantized(quant, device).unwrap_or_else(|e| {
            panic!("QLoraLinearConfig: a freshly initialised weight is finite: {e}")
        })
    }
}
