//! Applying a [`LoraConfig`] to a model as it is built: the model's constructor passes each of
//! its linear layers, with its dotted path, through a [`LoraApplier`] and stores the
//! [`AdaptedLinear`] it gets back.
//!
//! Burn 0.22 modules cannot change the type of a field after construction (`ModuleMapper` maps
//! tensors only), so the convention is: a model that wants LoRA declares its linears as
//! `AdaptedLinear` and builds them through the applier. PEFT's rules decide which paths get
//! adapters (see [`LoraMatcher`]); every base weight is frozen, and with a [`QuantConfig`] every
//! linear is stored in NF4 (as bitsandbytes' `Linear4bit` does for the whole model).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use qlora_backend::QuantConfig;
use qlora_nf4::QuantType;

use crate::loftq::loftq;
use crate::pissa::{path_seed, pissa};
use crate::{
    AdapterWeights, InitLoraWeights, LoraAdapter, LoraBias, LoraConfig, LoraError, LoraLinear,
    LoraMatcher, ModuleKind, QLoraLinear,
};

/// A linear layer after a config was applied: frozen as it was, LoRA over a float base, or
/// QLoRA over an NF4 base (with or without adapters).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AdaptedLinear {
    /// Not targeted, float: frozen.
    Frozen(Linear),
    /// One of `modules_to_save`: a float linear trained in full and saved with the adapter.
    Trained(Linear),
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
            AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.forward(x),
            AdaptedLinear::Lora(l) => l.forward(x),
            AdaptedLinear::QLora(l) => l.forward(x),
        }
    }

    /// [`AdaptedLinear::forward`] for a pass that reads only the output's gradient (the last
    /// linear of a checkpointed block's recomputation): an NF4 base skips its product
    /// ([`QLoraLinear::forward_output_unused`]); the other kinds run their forward pass.
    pub fn forward_output_unused<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            AdaptedLinear::QLora(l) => l.forward_output_unused(x),
            _ => self.forward(x),
        }
    }

    /// The adapter called `name`, if this layer has one.
    pub fn adapter(&self, name: &str) -> Option<&LoraAdapter> {
        self.adapters().and_then(|a| a.get(name))
    }

    /// The layer's adapters (`None` for a frozen float layer, which has none).
    pub fn adapters(&self) -> Option<&crate::LoraAdapters> {
        match self {
            AdaptedLinear::Frozen(_) | AdaptedLinear::Trained(_) => None,
            AdaptedLinear::Lora(l) => Some(&l.lora),
            AdaptedLinear::QLora(l) => Some(&l.lora),
        }
    }

    /// The layer's adapters, mutably (`None` for a frozen float layer).
    pub fn adapters_mut(&mut self) -> Option<&mut crate::LoraAdapters> {
        match self {
            AdaptedLinear::Frozen(_) | AdaptedLinear::Trained(_) => None,
            AdaptedLinear::Lora(l) => Some(&mut l.lora),
            AdaptedLinear::QLora(l) => Some(&mut l.lora),
        }
    }

    /// The width of the input.
    pub fn in_features(&self) -> usize {
        match self {
            AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.weight.dims()[0],
            AdaptedLinear::Lora(l) => l.in_features(),
            AdaptedLinear::QLora(l) => l.in_features(),
        }
    }

    /// The width of the output.
    pub fn out_features(&self) -> usize {
        match self {
            AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.weight.dims()[1],
            AdaptedLinear::Lora(l) => l.out_features(),
            AdaptedLinear::QLora(l) => l.out_features(),
        }
    }

    /// The layer with one more adapter: a frozen float layer becomes a [`LoraLinear`]. Errors if
    /// the adapter's shape does not fit, or if the layer is trained in full (`modules_to_save`).
    pub fn with_adapter(self, name: &str, adapter: LoraAdapter) -> Result<Self, LoraError> {
        Ok(match self {
            AdaptedLinear::Trained(_) => {
                return Err(LoraError::Layer {
                    problem: format!(
                        "the layer is one of modules_to_save (trained in full): it takes no \
                         LoRA adapter (`{name}`)"
                    ),
                });
            }
            AdaptedLinear::Frozen(l) => {
                let mut l = LoraLinear::new(l);
                l.add_adapter(name, adapter)?;
                AdaptedLinear::Lora(l)
            }
            AdaptedLinear::Lora(mut l) => {
                l.add_adapter(name, adapter)?;
                AdaptedLinear::Lora(l)
            }
            AdaptedLinear::QLora(mut l) => {
                l.add_adapter(name, adapter)?;
                AdaptedLinear::QLora(l)
            }
        })
    }

    /// The layer with its base weight as the initialisation of `applier`'s config leaves it
    /// (PiSSA's residual, LoftQ's quantized weight), for loading an adapter made on such a base:
    /// PEFT re-runs that initialisation on the original weight when it loads the adapter, and
    /// the file's A and B then sit on the same base they were trained on. A 4-bit base is
    /// refused (the initialisation reads the float weight).
    pub(crate) fn with_initialised_base(
        self,
        applier: &LoraApplier,
        path: &str,
    ) -> Result<Self, LoraError> {
        Ok(match self {
            AdaptedLinear::Frozen(l) => {
                AdaptedLinear::Frozen(applier.weight_aware_adapter(path, l)?.0)
            }
            AdaptedLinear::Lora(mut l) => {
                l.base = applier.weight_aware_adapter(path, l.base)?.0;
                AdaptedLinear::Lora(l)
            }
            AdaptedLinear::QLora(_) => {
                let init = applier.config().map(|c| c.init_lora_weights);
                return Err(LoraError::Layer {
                    problem: format!(
                        "init_lora_weights {init:?}: the adapter's A and B sit on the base its \
                         initialisation made from the float weight, and this layer is 4-bit: load \
                         the model in float to take this adapter (it can be quantized after)"
                    ),
                });
            }
            trained @ AdaptedLinear::Trained(_) => trained,
        })
    }

    /// The device of the layer's weight.
    pub fn device(&self) -> Device {
        match self {
            AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.weight.device(),
            AdaptedLinear::Lora(l) => l.base.weight.device(),
            AdaptedLinear::QLora(l) => l.base.packed.device(),
        }
    }

    /// The parameters of a layer trained in full (`modules_to_save`) as PEFT saves them:
    /// `<path>.weight` `[out, in]` and `<path>.bias`; empty for other layers.
    pub fn saved_params(&self, path: &str) -> Vec<(String, burn::tensor::TensorData)> {
        let AdaptedLinear::Trained(l) = self else {
            return Vec::new();
        };
        let mut out = vec![(
            format!("{path}.weight"),
            l.weight.val().transpose().into_data(),
        )];
        if let Some(b) = &l.bias {
            out.push((format!("{path}.bias"), b.val().into_data()));
        }
        out
    }

    /// A layer trained in full from saved parameters (`weight` `[out, in]`, optional `bias`),
    /// replacing this one; errors naming `path` if a shape differs from this layer's.
    pub fn with_saved(
        self,
        path: &str,
        weight: burn::tensor::TensorData,
        bias: Option<burn::tensor::TensorData>,
    ) -> Result<Self, LoraError> {
        let (d_in, d_out) = (self.in_features(), self.out_features());
        let bad = |problem: String| LoraError::Layer {
            problem: format!("`{path}`: {problem}"),
        };
        if weight.shape().as_slice() != [d_out, d_in] {
            return Err(bad(format!(
                "saved weight has shape {:?}, the layer needs [{d_out}, {d_in}]",
                weight.shape()
            )));
        }
        if let Some(b) = &bias
            && b.shape().as_slice() != [d_out]
        {
            return Err(bad(format!(
                "saved bias has shape {:?}, the layer needs [{d_out}]",
                b.shape()
            )));
        }
        let device = self.device();
        let weight = Tensor::<2>::from_data(weight.convert::<f32>(), &device).transpose();
        let bias =
            bias.map(|b| Param::from_tensor(Tensor::<1>::from_data(b.convert::<f32>(), &device)));
        Ok(AdaptedLinear::Trained(
            Linear {
                weight: Param::from_tensor(weight),
                bias,
            }
            .map(&mut RequireGrad),
        ))
    }

    /// Merges the active adapters into the base weight in place, keeping them for
    /// [`AdaptedLinear::unmerge`] (see [`LoraLinear::merge`], and [`QLoraLinear::merge`] for
    /// the rounding of an NF4 base). `path` names the layer in errors.
    pub fn merge(&mut self, path: &str) -> Result<(), LoraError> {
        match self {
            AdaptedLinear::Frozen(_) | AdaptedLinear::Trained(_) => Ok(()),
            AdaptedLinear::Lora(l) => {
                l.merge();
                Ok(())
            }
            AdaptedLinear::QLora(l) => Ok(l.merge(path)?),
        }
    }

    /// Takes merged adapters out of the base weight again.
    pub fn unmerge(&mut self, path: &str) -> Result<(), LoraError> {
        match self {
            AdaptedLinear::Frozen(_) | AdaptedLinear::Trained(_) => Ok(()),
            AdaptedLinear::Lora(l) => {
                l.unmerge();
                Ok(())
            }
            AdaptedLinear::QLora(l) => Ok(l.unmerge(path)?),
        }
    }

    /// Merges the active adapters into a float copy of the weight and drops all adapters:
    /// a frozen float `Linear` (an NF4 base is dequantized; see [`QLoraLinear::merge_to_linear`]).
    pub fn merge_and_unload(self) -> Self {
        match self {
            AdaptedLinear::Frozen(l) => AdaptedLinear::Frozen(l),
            AdaptedLinear::Trained(l) => AdaptedLinear::Frozen(l.no_grad()),
            AdaptedLinear::Lora(l) => AdaptedLinear::Frozen(l.merge_and_unload()),
            AdaptedLinear::QLora(l) => AdaptedLinear::Frozen(l.merge_to_linear()),
        }
    }
}

/// Makes every float parameter of a module trainable.
struct RequireGrad;

impl burn::module::ModuleMapper for RequireGrad {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.set_require_grad(true)
    }
}

/// Gives every float parameter of a module its value now. Burn initializes a parameter lazily,
/// at its first use: a base layer left so (the bias of a `LinearConfig::init`, which
/// quantization does not read) would draw its random values at the model's first forward pass,
/// from whatever the device's generator holds then, so that a run resumed from a checkpoint
/// (whose first forward pass comes at another step) would have another bias.
struct Materialize;

impl burn::module::ModuleMapper for Materialize {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| t)
    }
}

/// Builds the linears of a model under a [`LoraConfig`] (see the module docs).
#[derive(Debug, Clone)]
pub struct LoraApplier {
    config: Option<LoraConfig>,
    matcher: Option<LoraMatcher>,
    quantize: Option<QuantConfig>,
    adapter_name: String,
    device: Device,
}

impl LoraApplier {
    /// An applier adding adapters named `"default"` (PEFT's default name). With `quantize`,
    /// base weights are stored in NF4 (QLoRA); without, they stay float (LoRA).
    ///
    /// Errors on a config that does not validate.
    pub fn new(
        config: LoraConfig,
        quantize: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, LoraError> {
        config.validate()?;
        let matcher = LoraMatcher::new(&config).map_err(|(field, problem)| LoraError::Config {
            field: field.into(),
            problem,
        })?;
        Ok(Self {
            config: Some(config),
            matcher: Some(matcher),
            quantize,
            adapter_name: "default".into(),
            device: device.clone(),
        })
    }

    /// An applier that adds no adapter: every linear stays frozen, in NF4 with `quantize` (a
    /// 4-bit model for inference, or to add adapters to later), float without.
    pub fn base_only(quantize: Option<QuantConfig>, device: &Device) -> Self {
        Self {
            config: None,
            matcher: None,
            quantize,
            adapter_name: "default".into(),
            device: device.clone(),
        }
    }

    /// Uses `name` for the adapters this applier adds.
    pub fn with_adapter_name(mut self, name: &str) -> Self {
        self.adapter_name = name.to_string();
        self
    }

    /// The name of the adapters this applier adds (`default` unless given).
    pub fn adapter_name(&self) -> &str {
        &self.adapter_name
    }

    /// The config (`None` for [`LoraApplier::base_only`]).
    pub fn config(&self) -> Option<&LoraConfig> {
        self.config.as_ref()
    }

    /// How base weights are quantized (`None`: they stay float).
    pub fn quantize(&self) -> Option<QuantConfig> {
        self.quantize
    }

    /// The device layers are built on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the module at `path` is one of the config's `modules_to_save` (trained in full
    /// and saved with the adapter). Model code asks this for its non-linear modules
    /// (embeddings, heads) and makes their parameters trainable.
    pub fn is_module_to_save(&self, path: &str) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.is_module_to_save(path))
    }

    /// Whether the layer at `path` must be given as a float weight ([`LoraApplier::linear`]):
    /// its adapter's initialisation reads and changes the base weight (PiSSA, LoftQ), so a loader that
    /// quantizes on the host first must not do so for it.
    pub fn needs_float_weight(&self, path: &str, kind: ModuleKind) -> bool {
        self.is_target(path, kind)
            && self.config.as_ref().is_some_and(|c| {
                matches!(
                    c.init_lora_weights,
                    InitLoraWeights::Pissa { .. } | InitLoraWeights::Loftq { .. }
                )
            })
    }

    /// Whether the layer at `path` gets an adapter.
    pub fn is_target(&self, path: &str, kind: ModuleKind) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.is_target(path, kind))
    }

    fn new_adapter(&self, path: &str, [d_in, d_out]: [usize; 2]) -> Option<LoraAdapter> {
        let (config, matcher) = (self.config.as_ref()?, self.matcher.as_ref()?);
        Some(LoraAdapter::new(
            [d_in, d_out],
            matcher.rank(path),
            matcher.scaling(path),
            config.lora_dropout,
            config.init_lora_weights,
            &self.device,
        ))
    }

    /// The PiSSA or LoftQ adapter of the float layer at `path`, and the layer with its new
    /// base weight (PiSSA's residual, LoftQ's dequantized NF4 weight).
    pub(crate) fn weight_aware_adapter(
        &self,
        path: &str,
        mut base: Linear,
    ) -> Result<(Linear, LoraAdapter), LoraError> {
        let (config, matcher) = (
            self.config
                .as_ref()
                .expect("a weight-aware init comes from a config"),
            self.matcher
                .as_ref()
                .expect("a targeted layer has a matcher"),
        );
        let (r, scaling) = (matcher.rank(path), matcher.scaling(path));
        // Burn keeps the weight as [in, out]; PEFT's W is [out, in].
        let [d_in, d_out] = base.weight.dims();
        let w: Vec<f32> = base
            .weight
            .val()
            .transpose()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        let (a, b, new_base) = match config.init_lora_weights {
            InitLoraWeights::Pissa { niter } => {
                pissa(&w, [d_out, d_in], r, scaling, niter, path_seed(path))
                    .map(|p| (p.lora_a, p.lora_b, p.residual))
            }
            InitLoraWeights::Loftq { iters } => match self.quantize {
                // LoftQ fits bnb's NF4 at blocksize 64, as PEFT: another 4-bit base would
                // quantize its result again, losing what it fitted (double quantization only
                // rounds the absmax).
                Some(q) if q.quant_type != QuantType::Nf4 || q.blocksize.get() != 64 => {
                    Err(format!(
                        "LoftQ fits NF4 with blocksize 64 (bitsandbytes', as PEFT does); this \
                         base is {} with blocksize {}: use NF4 with blocksize 64",
                        q.quant_type.as_str(),
                        q.blocksize.get()
                    ))
                }
                _ => loftq(path, &w, [d_out, d_in], r, iters).map(|l| (l.lora_a, l.lora_b, l.base)),
            },
            other => unreachable!("{other:?} does not read the weight"),
        }
        .map_err(|e| LoraError::Layer {
            problem: format!(
                "{path}: init_lora_weights {:?}: {e}",
                config.init_lora_weights
            ),
        })?;
        let device = &self.device;
        let tensor = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, shape), device)
        };
        let new_base = tensor(new_base, [d_out, d_in]).transpose();
        base.weight = base.weight.map(|_| new_base);
        let adapter = LoraAdapter::from_weights(
            tensor(a, [r, d_in]),
            tensor(b, [d_out, r]),
            scaling,
            config.lora_dropout,
        );
        Ok((base, adapter))
    }

    fn bias_trains(&self, targeted: bool) -> bool {
        match self.config.as_ref().map(|c| c.bias) {
            None | Some(LoraBias::None) => false,
            Some(LoraBias::LoraOnly) => targeted,
            Some(LoraBias::All) => true,
        }
    }

    /// An already-quantized layer (for example read from a bnb-4bit checkpoint) at `path`, with
    /// a new adapter when the config targets it.
    pub fn quantized_linear(
        &self,
        path: &str,
        mut layer: QLoraLinear,
    ) -> Result<AdaptedLinear, LoraError> {
        if self.is_module_to_save(path) {
            // Trained in full: a float copy of the 4-bit weight.
            return Ok(AdaptedLinear::Trained(
                layer.merge_to_linear().map(&mut RequireGrad),
            ));
        }
        let targeted = self.is_target(path, ModuleKind::Linear);
        if let Some(c) = &self.config
            && targeted
            && matches!(
                c.init_lora_weights,
                InitLoraWeights::Pissa { .. } | InitLoraWeights::Loftq { .. }
            )
        {
            // PEFT refuses it too: the initialisation reads the float weight, which a 4-bit
            // checkpoint no longer has.
            return Err(LoraError::Layer {
                problem: format!(
                    "{path}: init_lora_weights {:?} needs the float weight, and this layer is \
                     already 4-bit (a bnb-4bit checkpoint): load the float model and let it be \
                     quantized after the initialisation (QLoRA + PiSSA quantizes the residual)",
                    c.init_lora_weights
                ),
            });
        }
        if targeted
            && let Some(a) = self.new_adapter(path, [layer.in_features(), layer.out_features()])
        {
            layer.add_adapter(&self.adapter_name, a)?;
        }
        if self.bias_trains(targeted) {
            layer.bias = layer.bias.take().map(|b| b.set_require_grad(true));
        }
        Ok(self.with_dora(AdaptedLinear::QLora(layer)))
    }

    /// An adapter read from a file for the layer at `path`, with the scaling the applier's
    /// config gives that path (the adapter file's own config if this applier has none).
    pub fn adapter_from_weights(
        &self,
        config: &LoraConfig,
        path: &str,
        weights: AdapterWeights,
    ) -> Result<LoraAdapter, LoraError> {
        weights.into_adapter(self.config.as_ref().unwrap_or(config), path)
    }

    /// The layer at `path` (dotted module path, as PEFT matches it); `kind` is
    /// [`ModuleKind::Linear`], or [`ModuleKind::OutputHead`] for the model's output
    /// projection, which `"all-linear"` leaves alone.
    pub fn linear(
        &self,
        path: &str,
        base: Linear,
        kind: ModuleKind,
    ) -> Result<AdaptedLinear, LoraError> {
        let base = base.map(&mut Materialize);
        if self.is_module_to_save(path) {
            // PEFT trains such a module in full, whatever the quantization of the rest.
            return Ok(AdaptedLinear::Trained(base.map(&mut RequireGrad)));
        }
        let targeted = self.is_target(path, kind);
        let bias_trains = self.bias_trains(targeted);
        let (base, adapter) = if self.needs_float_weight(path, kind) {
            // PiSSA and LoftQ set the adapter from the weight and change the base, before any
            // quantization (PEFT initialises both on the float weight).
            let (base, adapter) = self.weight_aware_adapter(path, base)?;
            (base, Some(adapter))
        } else if targeted {
            let adapter = self.new_adapter(path, base.weight.dims());
            (base, adapter)
        } else {
            (base, None)
        };
        let mut layer = match (self.quantize, adapter) {
            (None, None) => return Ok(AdaptedLinear::Frozen(base.no_grad())),
            (None, Some(a)) => {
                let mut l = LoraLinear::new(base);
                l.lora.add(&self.adapter_name, a);
                AdaptedLinear::Lora(l)
            }
            (Some(q), a) => {
                let mut l = QLoraLinear::quantize(path, base, q)?;
                if let Some(a) = a {
                    l.lora.add(&self.adapter_name, a);
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
                AdaptedLinear::Frozen(_) | AdaptedLinear::Trained(_) => {}
            }
        }
        Ok(self.with_dora(layer))
    }
}
