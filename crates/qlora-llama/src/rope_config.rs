//! [`RopeConfig`]: RoPE's parameters as HF configs give them (`rope_parameters` of
//! transformers 5, or `rope_theta` + `rope_scaling` of transformers 4; a partial rotary
//! factor), read and written back. The tables themselves are [`crate::Rope`]'s.

use serde_json::{Map, Value, json};

use crate::LlamaError;
use crate::config::{Fields, err};

/// How RoPE frequencies are scaled (`rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// LLaMA 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale of low frequencies.
        factor: f64,
        /// Wavelength bound of the low-frequency band (as `original / low_freq_factor`).
        low_freq_factor: f64,
        /// Wavelength bound of the high-frequency band.
        high_freq_factor: f64,
        /// Context length of pre-training.
        original_max_position_embeddings: usize,
    },
    /// LongRoPE (Ding et al. 2024; Phi-3's `longrope`): each inverse frequency divided by its
    /// factor, the short ones while a pass's positions stay within the pre-training context,
    /// the long ones beyond it, and cos and sin scaled by `attention_factor`.
    LongRope {
        /// Divisors within the original context, one per rotated pair.
        short_factor: Vec<f64>,
        /// Divisors beyond it.
        long_factor: Vec<f64>,
        /// The pre-training context (`original_max_position_embeddings`).
        original_max_position_embeddings: usize,
        /// The scale of cos and sin (given, or `sqrt(1 + ln f / ln original)` for the context
        /// factor `f`, as transformers derives it).
        attention_factor: f64,
    },
}

/// RoPE parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base of the frequencies (`rope_theta`).
    pub theta: f64,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// transformers 4's `rope_scaling`: `null` for plain RoPE, else the scaling's parameters
    /// (the base is the top-level `rope_theta`).
    pub fn to_hf_scaling_value(&self) -> Value {
        if self.scaling == RopeScaling::Default {
            return Value::Null;
        }
        let Value::Object(mut map) = self.to_hf_value(1.0) else {
            unreachable!("an object")
        };
        map.remove("rope_theta");
        Value::Object(map)
    }

    /// `rope_parameters` (transformers 5 form), with `partial_rotary_factor` when below 1.
    pub fn to_hf_value(&self, partial_rotary_factor: f64) -> Value {
        let mut rope = Map::new();
        rope.insert("rope_theta".into(), json!(self.theta));
        match &self.scaling {
            RopeScaling::Default => {
                rope.insert("rope_type".into(), json!("default"));
            }
            RopeScaling::Linear { factor } => {
                rope.insert("rope_type".into(), json!("linear"));
                rope.insert("factor".into(), json!(factor));
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                rope.insert("rope_type".into(), json!("longrope"));
                rope.insert("short_factor".into(), json!(short_factor));
                rope.insert("long_factor".into(), json!(long_factor));
                rope.insert(
                    "original_max_position_embeddings".into(),
                    json!(original_max_position_embeddings),
                );
                rope.insert("attention_factor".into(), json!(attention_factor));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                rope.insert("rope_type".into(), json!("llama3"));
                rope.insert("factor".into(), json!(factor));
                rope.insert("low_freq_factor".into(), json!(low_freq_factor));
                rope.insert("high_freq_factor".into(), json!(high_freq_factor));
                rope.insert(
                    "original_max_position_embeddings".into(),
                    json!(original_max_position_embeddings),
                );
            }
        }
        if partial_rotary_factor < 1.0 {
            rope.insert("partial_rotary_factor".into(), json!(partial_rotary_factor));
        }
        Value::Object(rope)
    }
}

/// `head_dim · partial_rotary_factor` (top level or in `rope_parameters`; 1 when absent),
/// even and at least 2.
pub(crate) fn rotary_dim(
    map: &Map<String, Value>,
    path: &str,
    head_dim: usize,
) -> Result<usize, LlamaError> {
    let (field, v) = match map.get("partial_rotary_factor") {
        Some(v) if !v.is_null() => ("partial_rotary_factor", v),
        _ => match map
            .get("rope_parameters")
            .and_then(|p| p.get("partial_rotary_factor"))
        {
            Some(v) if !v.is_null() => ("rope_parameters.partial_rotary_factor", v),
            _ => return Ok(head_dim),
        },
    };
    let factor = v
        .as_f64()
        .filter(|f| *f > 0.0 && *f <= 1.0)
        .ok_or_else(|| {
            err(
                path,
                field,
                format!("expected a number in (0, 1], found {v}"),
            )
        })?;
    // transformers: `int(head_dim * partial_rotary_factor)` (the 1e-9 keeps a factor written
    // back as `dim / head_dim` on `dim`).
    let dim = (head_dim as f64 * factor + 1e-9) as usize;
    if dim < 2 || !dim.is_multiple_of(2) {
        return Err(err(
            path,
            field,
            format!(
                "{factor} of head_dim {head_dim} rotates {dim} dimensions; RoPE needs an even number"
            ),
        ));
    }
    Ok(dim)
}

/// RoPE from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4). Where a
/// config carries both forms (as the folders written here do, so that either version reads
/// them), they must agree: transformers 4 reads one and 5 the other, so a difference would run
/// the model with another RoPE depending on the reader, and is a named error.
pub(crate) fn read_rope(map: &Map<String, Value>, path: &str) -> Result<RopeConfig, LlamaError> {
    let object = |key: &'static str| match map.get(key) {
        Some(Value::Object(p)) => Ok(Some((key, p))),
        None | Some(Value::Null) => Ok(None),
        Some(v) => Err(err(path, key, format!("expected an object, found {v}"))),
    };
    let (v5, v4) = (object("rope_parameters")?, object("rope_scaling")?);
    let top = Fields { map, path };
    let theta_default = top.f64_or("rope_theta", Some(10000.0))?;
    let v4_rope = match v4 {
        Some((name, p)) => read_rope_params(p, name, theta_default, map, path)?,
        None => RopeConfig {
            theta: theta_default,
            scaling: RopeScaling::Default,
        },
    };
    let Some((name, p)) = v5 else {
        return Ok(v4_rope);
    };
    let rope = read_rope_params(p, name, theta_default, map, path)?;
    if map.get("rope_theta").is_some_and(|v| !v.is_null()) && v4_rope.theta != rope.theta {
        return Err(err(
            path,
            "rope_theta",
            format!(
                "{} disagrees with rope_parameters.rope_theta {} (transformers 4 reads the first,                  5 the second)",
                v4_rope.theta, rope.theta
            ),
        ));
    }
    if v4.is_some() && v4_rope.scaling != rope.scaling {
        return Err(err(
            path,
            "rope_scaling",
            format!(
                "{:?} disagrees with rope_parameters' {:?} (transformers 4 reads the first, 5 the                  second)",
                v4_rope.scaling, rope.scaling
            ),
        ));
    }
    Ok(rope)
}

/// RoPE from one parameter object (`rope_parameters`, `rope_scaling`, or one layer type's entry
/// of Gemma 3's), named `name` in errors; `theta_default` where it gives no `rope_theta`.
/// `top` is the config's top level (LongRoPE's context lengths are read there first, as
/// transformers gives Phi-3's top-level `original_max_position_embeddings` priority).
pub(crate) fn read_rope_params(
    p: &Map<String, Value>,
    name: &str,
    theta_default: f64,
    top: &Map<String, Value>,
    path: &str,
) -> Result<RopeConfig, LlamaError> {
    let f = Fields { map: p, path };
    let field = |k: &str| format!("{name}.{k}");
    let theta = match p.get("rope_theta") {
        Some(v) => v.as_f64().filter(|t| *t > 0.0).ok_or_else(|| {
            err(
                path,
                &field("rope_theta"),
                format!("expected a positive number, found {v}"),
            )
        })?,
        None => theta_default,
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| {
        f.f64_or(k, None).map_err(|_| {
            err(
                path,
                &field(k),
                format!("missing or not a number (rope_type `{kind}`)"),
            )
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: f.usize("original_max_position_embeddings").map_err(
                |_| {
                    err(
                        path,
                        &field("original_max_position_embeddings"),
                        "missing or not a positive integer",
                    )
                },
            )?,
        },
        "longrope" => read_longrope(p, name, top, path)?,
        // Phi-3's older names of LongRoPE (`Phi3Config` maps them so).
        "su" | "yarn" if phi3(top) => read_longrope(p, name, top, path)?,
        other => {
            return Err(err(
                path,
                &field("rope_type"),
                format!("`{other}` is not supported (default, linear, llama3, longrope)"),
            ));
        }
    };
    Ok(RopeConfig { theta, scaling })
}

/// LongRoPE's parameters, its attention factor derived as transformers does where not given.
fn read_longrope(
    p: &Map<String, Value>,
    name: &str,
    top: &Map<String, Value>,
    path: &str,
) -> Result<RopeScaling, LlamaError> {
    let field = |k: &str| format!("{name}.{k}");
    let factors = |k: &str| -> Result<Vec<f64>, LlamaError> {
        p.get(k)
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_f64().filter(|x| *x > 0.0 && x.is_finite()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| err(path, &field(k), "missing or not a list of positive numbers"))
    };
    let (short_factor, long_factor) = (factors("short_factor")?, factors("long_factor")?);
    let key = "original_max_position_embeddings";
    // `Phi3Config` always has the top-level field (default 4096), and it wins over the RoPE's.
    let phi3_default = json!(4096);
    let (original, at) = match (top.get(key).filter(|v| !v.is_null()), p.get(key)) {
        (Some(v), _) => (v, key.to_string()),
        (None, _) if phi3(top) => (&phi3_default, key.to_string()),
        (None, Some(v)) => (v, field(key)),
        (None, None) => return Err(err(path, &field(key), "missing (rope_type `longrope`)")),
    };
    let original = original
        .as_u64()
        .filter(|&x| x > 1)
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| {
            err(
                path,
                &at,
                format!("expected a context length, found {original}"),
            )
        })?;
    let number = |k: &str| -> Result<Option<f64>, LlamaError> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| *x > 0.0 && x.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    err(
                        path,
                        &field(k),
                        format!("expected a positive number, found {v}"),
                    )
                }),
        }
    };
    let attention_factor = match number("attention_factor")? {
        Some(a) => a,
        None => {
            let factor = match number("factor")? {
                Some(f) => f,
                None => {
                    let default = if phi3(top) { 4096 } else { 2048 };
                    let max =
                        Fields { map: top, path }.usize_or("max_position_embeddings", default)?;
                    max as f64 / original as f64
                }
            };
            if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (original as f64).ln()).sqrt()
            }
        }
    };
    Ok(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// Whether `top` is a Phi-3 config (whose class gives LongRoPE its defaults).
fn phi3(top: &Map<String, Value>) -> bool {
    top.get("model_type").and_then(Value::as_str) == Some("phi3")
}
