//! [`LoraConfig`]: PEFT's `LoraConfig`, with PEFT's field names, defaults and file format.
//!
//! Reading is strict: every field name PEFT 0.21 writes is accepted, a name PEFT does not have is
//! an error that names it, and a value that asks for a feature burn-qlora does not have (layer
//! replication, QA-LoRA, ...) is an error that names the field, never silently ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LoraError;
use crate::peft_fields::{INFORMATIONAL, NEUTRAL_ONLY, OWN, is_neutral};

/// `target_modules` / `exclude_modules`: a list of names (exact or dotted-suffix match) or one
/// regular expression (full match), or PEFT's `"all-linear"` shorthand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    /// Names: a module matches if its path equals one or ends with `.` + one.
    List(Vec<String>),
    /// A regular expression matched against the whole module path (`"all-linear"` is special).
    Pattern(String),
}

/// `layers_to_transform`: one layer index or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// One index.
    One(usize),
    /// Several indices.
    Many(Vec<usize>),
}

/// `layers_pattern`: the name(s) of the module list holding the layers (`"layers"`, `"h"`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayersPattern {
    /// One name.
    One(String),
    /// Several names, tried in order.
    Many(Vec<String>),
}

/// `bias`: which biases train along with the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraBias {
    /// No bias trains (the QLoRA default).
    #[default]
    None,
    /// Every bias of the model trains.
    All,
    /// Only the biases of the LoRA-adapted layers train.
    LoraOnly,
}

/// `init_lora_weights`: `true` (Kaiming-uniform A, zero B), `"gaussian"` (A ~ N(0, 1/r), zero B),
/// `"pissa"` / `"pissa_niter_K"` (A and B from the weight's principal singular vectors, the base
/// keeping the residual: [`crate::pissa`]), `"loftq"` ([`crate::loftq`]) or `false` (A and B both Kaiming-uniform, so the
/// adapter starts non-zero; for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitLoraWeights {
    /// PEFT's default: A Kaiming-uniform (a = √5), B = 0.
    #[default]
    Default,
    /// A ~ N(0, 1/r), B = 0.
    Gaussian,
    /// A and B Kaiming-uniform (PEFT's `false`: the layer's plain `nn.Linear` init).
    Random,
    /// PiSSA: the full SVD (`niter: None`, PEFT's `"pissa"`) or the randomized one with that
    /// many power iterations (`"pissa_niter_K"`). The base weight becomes the residual, so it
    /// must be a float weight (quantized afterwards, as QLoRA + PiSSA does).
    Pissa {
        /// Power iterations of the randomized SVD; `None` for the full SVD.
        niter: Option<usize>,
    },
    /// LoftQ (PEFT's `"loftq"` with `loftq_config = {"loftq_bits": 4, "loftq_iter": iters}`):
    /// the base and the adapter chosen together by `iters` alternations of NF4 quantization and
    /// truncated SVD ([`crate::loftq`]). It needs a float base, as PiSSA does.
    Loftq {
        /// Alternations (`loftq_iter`, at least 1).
        iters: usize,
    },
}

impl InitLoraWeights {
    /// The value as PEFT writes it in `adapter_config.json`, or as `--init-lora-weights` takes
    /// it (`true` is `default`, `false` is `random`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "default" | "true" => Some(Self::Default),
            "gaussian" => Some(Self::Gaussian),
            "random" | "false" => Some(Self::Random),
            "pissa" => Some(Self::Pissa { niter: None }),
            // One alternation, PEFT's default `loftq_iter`; the config's `loftq_config` or
            // `--loftq-iter` sets another.
            "loftq" => Some(Self::Loftq { iters: 1 }),
            _ => {
                let k = s.strip_prefix("pissa_niter_")?.parse().ok()?;
                Some(Self::Pissa { niter: Some(k) })
            }
        }
    }
}

impl Serialize for InitLoraWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InitLoraWeights::Default => s.serialize_bool(true),
            InitLoraWeights::Gaussian => s.serialize_str("gaussian"),
            InitLoraWeights::Random => s.serialize_bool(false),
            InitLoraWeights::Pissa { niter: None } => s.serialize_str("pissa"),
            InitLoraWeights::Pissa { niter: Some(k) } => {
                s.serialize_str(&format!("pissa_niter_{k}"))
            }
            InitLoraWeights::Loftq { .. } => s.serialize_str("loftq"),
        }
    }
}

/// `trainable_token_indices`: token ids whose rows of the input embedding train (a list), or
/// per table by module name (`{"embed_tokens": [..], "lm_head": [..]}`), PEFT's
/// `TrainableTokensLayer` ([`crate::TrainableTokens`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TrainableTokenIndices {
    /// Rows of the model's input embedding.
    List(Vec<usize>),
    /// Rows per table, by module name (exact or dotted-suffix match), in file order.
    ByModule(Vec<(String, Vec<usize>)>),
}

/// PEFT's `LoraConfig` (the fields burn-qlora acts on; see the module docs for the rest).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Adapter rank (PEFT default 8).
    pub r: usize,
    /// Scale numerator: `scaling = lora_alpha / r` (PEFT default 8).
    pub lora_alpha: f64,
    /// Dropout on the adapter input during training (PEFT default 0).
    pub lora_dropout: f64,
    /// Modules to adapt.
    pub target_modules: Option<ModuleSelector>,
    /// Modules never to adapt, checked first.
    pub exclude_modules: Option<ModuleSelector>,
    /// Restrict list targets to these layer indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// Name of the layer list for `layers_to_transform`.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module rank overrides, `{pattern: r}`, in file order.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, `{pattern: alpha}`, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// rsLoRA: `scaling = lora_alpha / sqrt(r)` (Kalajdzievski 2023).
    pub use_rslora: bool,
    /// DoRA: a trained magnitude per output row beside A and B ([`crate::dora`]; Liu et al.
    /// 2024).
    pub use_dora: bool,
    /// Which biases train.
    pub bias: LoraBias,
    /// How A and B start.
    pub init_lora_weights: InitLoraWeights,
    /// Modules trained in full and saved with the adapter.
    pub modules_to_save: Option<Vec<String>>,
    /// Token ids whose embedding (and head) rows train (PEFT's `trainable_token_indices`).
    pub trainable_token_indices: Option<TrainableTokenIndices>,
    /// PEFT's `ensure_weight_tying`: on a model whose head is tied to its embedding, a table
    /// trained through `modules_to_save` or trainable tokens stays one table for both (without
    /// it PEFT trains a copy for one side and the other keeps the base's weights, and trainable
    /// tokens with different rows per table train apart).
    pub ensure_weight_tying: bool,
    /// The base model the adapter belongs to.
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type (`"CAUSAL_LM"` for the examples).
    pub task_type: Option<String>,
    /// Whether the adapter was saved for inference only.
    pub inference_mode: bool,
    /// Base model revision.
    pub revision: Option<String>,
}

impl Default for LoraConfig {
    /// PEFT's defaults (`target_modules` unset: give one before applying).
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            use_rslora: false,
            use_dora: false,
            bias: LoraBias::None,
            init_lora_weights: InitLoraWeights::Default,
            modules_to_save: None,
            trainable_token_indices: None,
            ensure_weight_tying: false,
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
            inference_mode: false,
            revision: None,
        }
    }
}

impl LoraConfig {
    /// Reads `adapter_config.json` (or any PEFT LoRA config file).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoraError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| LoraError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_json_bytes(&text, &name)
    }

    /// Parses config JSON; `path` names its source in errors.
    pub fn from_json_bytes(bytes: &[u8], path: &str) -> Result<Self, LoraError> {
        let json_err = |problem: String| LoraError::Json {
            path: path.to_string(),
            problem,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| json_err(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(json_err("the top level is not a JSON object".into()));
        };
        for (k, v) in &obj {
            if OWN.contains(&k.as_str()) || INFORMATIONAL.contains(&k.as_str()) {
                continue;
            }
            match NEUTRAL_ONLY.iter().find(|(f, _)| f == k) {
                Some((_, why)) if !is_neutral(v) => {
                    return Err(LoraError::Unsupported {
                        path: path.to_string(),
                        field: k.clone(),
                        value: v.to_string(),
                        why: why.to_string(),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(LoraError::UnknownField {
                        path: path.to_string(),
                        field: k.clone(),
                    });
                }
            }
        }
        if let Some(t) = obj.get("peft_type").and_then(Value::as_str)
            && t != "LORA"
        {
            return Err(LoraError::Unsupported {
                path: path.to_string(),
                field: "peft_type".into(),
                value: format!("\"{t}\""),
                why: "only LoRA adapters are supported".into(),
            });
        }
        let d = LoraConfig::default();
        let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let get = |k: &str| -> Result<Option<Value>, LoraError> { Ok(field(k).cloned()) };
        let cfg = LoraConfig {
            r: typed(get("r")?, "r", path)?.unwrap_or(d.r),
            lora_alpha: typed(get("lora_alpha")?, "lora_alpha", path)?.unwrap_or(d.lora_alpha),
            lora_dropout: typed(get("lora_dropout")?, "lora_dropout", path)?
                .unwrap_or(d.lora_dropout),
            target_modules: typed(get("target_modules")?, "target_modules", path)?,
            exclude_modules: typed(get("exclude_modules")?, "exclude_modules", path)?,
            layers_to_transform: typed(get("layers_to_transform")?, "layers_to_transform", path)?,
            layers_pattern: typed(get("layers_pattern")?, "layers_pattern", path)?,
            rank_pattern: ordered_map(field("rank_pattern"), "rank_pattern", path)?,
            alpha_pattern: ordered_map(field("alpha_pattern"), "alpha_pattern", path)?,
            use_rslora: typed(get("use_rslora")?, "use_rslora", path)?.unwrap_or(false),
            use_dora: typed(get("use_dora")?, "use_dora", path)?.unwrap_or(false),
            bias: typed(get("bias")?, "bias", path)?.unwrap_or_default(),
            init_lora_weights: match field("init_lora_weights") {
                None | Some(Value::Bool(true)) => InitLoraWeights::Default,
                Some(Value::Bool(false)) => InitLoraWeights::Random,
                Some(Value::String(s)) if s == "loftq" => InitLoraWeights::Loftq {
                    iters: loftq_iters(field("loftq_config"), path)?,
                },
                Some(Value::String(s))
                    if matches!(
                        InitLoraWeights::parse(s),
                        Some(InitLoraWeights::Gaussian | InitLoraWeights::Pissa { .. })
                    ) =>
                {
                    InitLoraWeights::parse(s).expect("matched above")
                }
                Some(other) => {
                    return Err(LoraError::Unsupported {
                        path: path.to_string(),
                        field: "init_lora_weights".into(),
                        value: other.to_string(),
                        why: "only true, false, \"gaussian\", \"pissa\", \"pissa_niter_K\" and \
                              \"loftq\" are implemented (not OLoRA, EVA, CorDA, MiCA)"
                            .into(),
                    });
                }
            },
            modules_to_save: typed(get("modules_to_save")?, "modules_to_save", path)?,
            trainable_token_indices: match field("trainable_token_indices") {
                None => None,
                Some(Value::Object(_)) => Some(TrainableTokenIndices::ByModule(ordered_map(
                    field("trainable_token_indices"),
                    "trainable_token_indices",
                    path,
                )?)),
                Some(v) => Some(TrainableTokenIndices::List(
                    typed(Some(v.clone()), "trainable_token_indices", path)?.expect("present"),
                )),
            },
            ensure_weight_tying: typed(get("ensure_weight_tying")?, "ensure_weight_tying", path)?
                .unwrap_or(false),
            base_model_name_or_path: typed(
                get("base_model_name_or_path")?,
                "base_model_name_or_path",
                path,
            )?,
            task_type: typed(get("task_type")?, "task_type", path)?,
            inference_mode: typed(get("inference_mode")?, "inference_mode", path)?.unwrap_or(false),
            revision: typed(get("revision")?, "revision", path)?,
        };
        cfg.validate().map_err(|e| match e {
            LoraError::Config { field, problem } => LoraError::BadValue {
                path: path.to_string(),
                field,
                problem,
            },
            e => e,
        })?;
        Ok(cfg)
    }

    /// Checks ranges and patterns ([`LoraError::Config`] names the field; [`LoraConfig::load`]
    /// names the file too).
    pub fn validate(&self) -> Result<(), LoraError> {
        let bad = |field: &str, problem: String| LoraError::Config {
            field: field.into(),
            problem,
        };
        if self.r == 0 {
            return Err(bad("r", "the rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(bad(
                "lora_dropout",
                format!("{} is outside [0, 1)", self.lora_dropout),
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err(bad(
                "lora_alpha",
                format!("{} is not finite", self.lora_alpha),
            ));
        }
        if let Some((k, a)) = self.alpha_pattern.iter().find(|(_, a)| !a.is_finite()) {
            return Err(bad("alpha_pattern", format!("{a} for `{k}` is not finite")));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| *r == 0) {
            return Err(bad("rank_pattern", format!("rank 0 for `{k}`")));
        }
        if let Some(tokens) = &self.trainable_token_indices {
            let tables: Vec<(&str, &Vec<usize>)> = match tokens {
                TrainableTokenIndices::List(v) => vec![("embed_tokens", v)],
                TrainableTokenIndices::ByModule(m) => {
                    m.iter().map(|(k, v)| (k.as_str(), v)).collect()
                }
            };
            if tables.is_empty() {
                return Err(bad("trainable_token_indices", "names no table".into()));
            }
            for (table, rows) in tables {
                if rows.is_empty() {
                    return Err(bad(
                        "trainable_token_indices",
                        format!("no token indices for `{table}`"),
                    ));
                }
                // PEFT: "The embedding layer is already marked to be trained fully".
                if self.modules_to_save.iter().flatten().any(|m| m == table) {
                    return Err(bad(
                        "trainable_token_indices",
                        format!(
                            "`{table}` is in modules_to_save too: train the whole table or \
                             chosen rows of it, not both"
                        ),
                    ));
                }
            }
        }
        crate::LoraMatcher::new(self).map_err(|(field, problem)| bad(field, problem))?;
        Ok(())
    }
}

/// `loftq_config`'s alternation count for `init_lora_weights = "loftq"`: the config must be
/// there (as PEFT requires), 4-bit only (PEFT's `loftq_bits` 8 is int8, not implemented),
/// `loftq_iter` at least 1 (1 when absent, PEFT's default).
fn loftq_iters(config: Option<&Value>, path: &str) -> Result<usize, LoraError> {
    let unsupported = |value: String, why: &str| LoraError::Unsupported {
        path: path.to_string(),
        field: "loftq_config".into(),
        value,
        why: why.into(),
    };
    // PEFT raises on "loftq" without a loftq_config.
    let obj = match config {
        Some(Value::Object(m)) if !m.is_empty() => m,
        other => {
            return Err(unsupported(
                other.map_or("absent".into(), Value::to_string),
                "init_lora_weights \"loftq\" needs {\"loftq_bits\": 4, \"loftq_iter\": N}",
            ));
        }
    };
    match obj.get("loftq_bits") {
        None => {}
        Some(v) if v.as_u64() == Some(4) => {}
        Some(v) => {
            return Err(unsupported(
                v.to_string(),
                "only loftq_bits 4 (NF4) is implemented",
            ));
        }
    }
    match obj.get("loftq_iter") {
        None => Ok(1),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(n as usize),
            _ => Err(unsupported(
                v.to_string(),
                "loftq_iter must be an integer ≥ 1",
            )),
        },
    }
}

/// A present field converted to its type, the error naming the field.
fn typed<T: serde::de::DeserializeOwned>(
    v: Option<Value>,
    field: &str,
    path: &str,
) -> Result<Option<T>, LoraError> {
    v.map(|v| {
        serde_json::from_value(v).map_err(|e| LoraError::Json {
            path: path.to_string(),
            problem: format!("`{field}`: {e}"),
        })
    })
    .transpose()
}

fn ordered_map<T: serde::de::DeserializeOwned>(
    v: Option<&Value>,
    field: &str,
    path: &str,
) -> Result<Vec<(String, T)>, LoraError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                serde_json::from_value(v.clone())
                    .map(|t| (k.clone(), t))
                    .map_err(|e| LoraError::Json {
                        path: path.to_string(),
                        problem: format!("`{field}.{k}`: {e}"),
                    })
            })
            .collect(),
        Some(other) => Err(LoraError::Json {
            path: path.to_string(),
            problem: format!("`{field}` is {other}, expected an object"),
        }),
    }
}
