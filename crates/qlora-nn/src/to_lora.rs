//! A PiSSA adapter converted to plain LoRA on the original weight, as PEFT's
//! `save_pretrained(..., path_initial_model_for_weight_conversion=...)` writes it (Meng et al.
//! 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language
//! Models", arXiv:2404.02948, §4 "PiSSA → LoRA").
//!
//! PiSSA starts from `W = W_res + s·B₀·A₀` and trains `A`, `B` on `W_res`, so the trained model
//! is `W_res + s·B·A = W + s·(B·A − B₀·A₀)`. That difference is a LoRA of twice the rank on the
//! original `W`: `lora_A = [A; A₀]` (`[2r, in]`), `lora_B = [B, −B₀]` (`[out, 2r]`), with `r`,
//! `lora_alpha` (`× √2` under rsLoRA, which keeps `α/√r`), `rank_pattern` and `alpha_pattern`
//! doubled so the scaling stays `s`. The converted adapter loads on the unmodified base, beside
//! other adapters, without re-running the SVD.
//!
//! Only PiSSA is converted (other starts leave the base alone, so their adapter already applies
//! to it), and only against its own start (same rank, alpha, rsLoRA and patterns). As PEFT, it
//! refuses rsLoRA together with rank or alpha patterns. Unlike PEFT, which keeps
//! only `lora_A` / `lora_B`, the adapter's DoRA magnitudes, `modules_to_save` and trainable
//! tokens are carried over: a magnitude normalises `W_res + s·B·A`, the same matrix, and the
//! others replace base parameters PiSSA never touched. LoftQ is refused: its base is the
//! quantized fit `Q(W − s·B₀·A₀)`, not `W − s·B₀·A₀`, so no adapter on `W` reproduces it. On a
//! 4-bit base the conversion is not exact either (`Q(W_res) + s·B·A ≠ Q(W) + s·(B·A − B₀·A₀)`),
//! which PEFT warns about too.

use burn::tensor::Tensor;

use crate::{AdapterWeights, InitLoraWeights, LoraError, PeftAdapter};

impl PeftAdapter {
    /// This (trained) adapter as plain LoRA on the original weight, given the adapter as its
    /// initialisation left it (`initial`, for example saved before training, or taken from the
    /// model right after it was built). See the module docs.
    ///
    /// Errors, naming the module or field, when the adapter was not made by PiSSA (LoftQ's base
    /// is not `W − s·B₀·A₀`; other starts left the base alone), when rsLoRA meets a rank or
    /// alpha pattern, or when `initial` is not the same adapter's start (a module missing on
    /// either side, shapes that differ, or another rank, alpha, rsLoRA or pattern).
    pub fn converted_to_lora(&self, initial: &PeftAdapter) -> Result<PeftAdapter, LoraError> {
        let refuse = |field: &str, problem: String| LoraError::Adapter {
            source_name: self.origin(),
            module: field.into(),
            problem,
        };
        let mut config = self.config.clone();
        match config.init_lora_weights {
            InitLoraWeights::Pissa { .. } => {}
            InitLoraWeights::Loftq { .. } => {
                return Err(refuse(
                    "init_lora_weights",
                    "a LoftQ adapter cannot be converted to LoRA on the original weight: its \
                     base is the quantized fit, not the original weight minus the start"
                        .into(),
                ));
            }
            other => {
                return Err(refuse(
                    "init_lora_weights",
                    format!(
                        "{other:?}: only a PiSSA adapter is converted (its base is the original \
                         weight minus the start; other starts leave the base as it was, so \
                         the adapter already applies to it)"
                    ),
                ));
            }
        }
        if config.use_rslora && !(config.rank_pattern.is_empty() && config.alpha_pattern.is_empty())
        {
            return Err(refuse(
                "use_rslora",
                "rsLoRA with rank_pattern or alpha_pattern cannot be converted (PEFT refuses it \
                 too: doubling the rank changes each pattern's scaling differently)"
                    .into(),
            ));
        }
        // The start must have been removed with this adapter's scaling (PEFT's recipe saves it
        // with init_lora_weights = true, so that field is not compared).
        let (a, b) = (&self.config, &initial.config);
        for (field, same) in [
            ("r", a.r == b.r),
            ("lora_alpha", a.lora_alpha == b.lora_alpha),
            ("use_rslora", a.use_rslora == b.use_rslora),
            ("rank_pattern", a.rank_pattern == b.rank_pattern),
            ("alpha_pattern", a.alpha_pattern == b.alpha_pattern),
        ] {
            if !same {
                return Err(refuse(
                    field,
                    format!(
                        "differs in the initial adapter {}: not this adapter's start",
                        initial.origin()
                    ),
                ));
            }
        }
        if let Some(extra) = initial
            .modules
            .keys()
            .find(|k| !self.modules.contains_key(*k))
        {
            return Err(refuse(
                extra,
                format!(
                    "the initial adapter {} has this module and the trained one does not",
                    initial.origin()
                ),
            ));
        }
        let mut modules = std::collections::BTreeMap::new();
        for (path, w) in &self.modules {
            let w0 = initial.modules.get(path).ok_or_else(|| {
                refuse(
                    path,
                    format!(
                        "the initial adapter {} has no weights for it",
                        initial.origin()
                    ),
                )
            })?;
            if w0.lora_a.dims() != w.lora_a.dims() || w0.lora_b.dims() != w.lora_b.dims() {
                return Err(refuse(
                    path,
                    format!(
                        "lora_A {:?} / lora_B {:?} here, {:?} / {:?} in the initial adapter {}: \
                         not the same adapter's start",
                        w.lora_a.dims(),
                        w.lora_b.dims(),
                        w0.lora_a.dims(),
                        w0.lora_b.dims(),
                        initial.origin()
                    ),
                ));
            }
            let lora_a = Tensor::cat(vec![w.lora_a.clone(), w0.lora_a.clone()], 0);
            let lora_b = Tensor::cat(vec![w.lora_b.clone(), w0.lora_b.clone().neg()], 1);
            modules.insert(
                path.clone(),
                AdapterWeights {
                    lora_a,
                    lora_b,
                    magnitude: w.magnitude.clone(),
                },
            );
        }
        config.init_lora_weights = InitLoraWeights::Default;
        config.r *= 2;
        config.lora_alpha *= if config.use_rslora {
            std::f64::consts::SQRT_2
        } else {
            2.0
        };
        config.rank_pattern.iter_mut().for_each(|(_, r)| *r *= 2);
        config.alpha_pattern.iter_mut().for_each(|(_, a)| *a *= 2.0);
        Ok(PeftAdapter {
            config,
            modules,
            saved: self.saved.clone(),
            tokens: self.tokens.clone(),
            dtype: self.dtype,
            source: None,
        })
    }
}
