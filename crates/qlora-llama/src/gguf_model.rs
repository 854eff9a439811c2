//! A GGUF model file of llama.cpp's `llama`, `qwen2`, `qwen3`, `phi3` or `gemma3`
//! architecture as a [`WeightSource`] with HF names: its config from the metadata (as HF
//! `config.json` fields, read by [`LlamaConfig`]'s own reader), tensors renamed
//! (`blk.N.attn_q` → `model.layers.N.self_attn.q_proj`, ...) and dequantized to f32, with
//! `convert_hf_to_gguf.py`'s changes undone: `llama`'s Q/K rows un-permuted from llama.cpp's
//! interleaved RoPE order back to HF's `rotate_half` order, Gemma's norms stored as `1 + w`
//! shifted back. Mistral models are `llama` files (llama.cpp drops their window).

use std::path::Path;

use serde_json::{Value, json};

use crate::gguf::{GgufFile, GgufValue};
use crate::{HostFloats, HostTensor, LlamaConfig, LlamaError, ModelType, WeightSource};

/// A GGUF model file (see the module docs).
#[derive(Debug)]
pub struct GgufModel {
    /// The file.
    pub file: GgufFile,
    config: LlamaConfig,
}

/// How a GGUF tensor becomes the HF one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Convert {
    /// As stored.
    Same,
    /// llama.cpp's interleaved-RoPE row order of a `llama` Q (`false`) or K (`true`) weight.
    Unpermute { is_k: bool },
    /// A Gemma norm, stored as `1 + w` (llama.cpp's `norm_shift`): minus one.
    UnitOffset,
}

/// The GGUF name of HF tensor `name` in a file of family `family`, and how to convert it
/// (llama.cpp's `convert_hf_to_gguf.py` and gguf-py's tensor map, read backwards).
pub(crate) fn gguf_name(name: &str, family: ModelType) -> Option<(String, Convert)> {
    let gemma = family == ModelType::Gemma3;
    let norm = if gemma {
        Convert::UnitOffset
    } else {
        Convert::Same
    };
    let fixed = match name {
        "model.embed_tokens.weight" => Some(("token_embd.weight", Convert::Same)),
        "model.norm.weight" => Some(("output_norm.weight", norm)),
        "lm_head.weight" => Some(("output.weight", Convert::Same)),
        _ => None,
    };
    if let Some((f, c)) = fixed {
        return Some((f.to_string(), c));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    // Only llama.cpp's `llama` permutes Q and K (the others rotate halves as HF does).
    let permuted = |is_k| {
        if family == ModelType::Llama {
            Convert::Unpermute { is_k }
        } else {
            Convert::Same
        }
    };
    let (g, convert) = match module {
        "input_layernorm" => ("attn_norm", norm),
        // Gemma 3's norm of the attention output; llama's norm before the MLP.
        "post_attention_layernorm" if gemma => ("post_attention_norm", norm),
        "post_attention_layernorm" => ("ffn_norm", norm),
        "pre_feedforward_layernorm" => ("ffn_norm", norm),
        "post_feedforward_layernorm" => ("post_ffw_norm", norm),
        "self_attn.q_norm" => ("attn_q_norm", norm),
        "self_attn.k_norm" => ("attn_k_norm", norm),
        "self_attn.q_proj" => ("attn_q", permuted(false)),
        "self_attn.k_proj" => ("attn_k", permuted(true)),
        "self_attn.v_proj" => ("attn_v", Convert::Same),
        "self_attn.qkv_proj" => ("attn_qkv", Convert::Same),
        "self_attn.o_proj" => ("attn_output", Convert::Same),
        "mlp.gate_proj" => ("ffn_gate", Convert::Same),
        "mlp.up_proj" => ("ffn_up", Convert::Same),
        // Phi-3's fused gate and up (gate half first), as llama.cpp keeps it.
        "mlp.gate_up_proj" => ("ffn_up", Convert::Same),
        "mlp.down_proj" => ("ffn_down", Convert::Same),
        _ => return None,
    };
    Some((format!("blk.{layer}.{g}.{kind}"), convert))
}

/// Undoes llama.cpp's Q/K permutation: rows `[heads, head_dim/2, 2]` → `[heads, 2, head_dim/2]`.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_head_rows(w, rows, cols, heads, false)
}

/// llama.cpp's Q/K permutation (`convert_hf_to_gguf.py`'s `permute`): each head's rows
/// `[2, head_dim/2]` become `[head_dim/2, 2]`; the inverse of [`unpermute_rows`].
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_head_rows(w, rows, cols, heads, true)
}

/// Moves each head's rows between HF's `rotate_half` order (row `s·half + j`) and llama.cpp's
/// interleaved one (row `2j + s`): to llama.cpp's where `to_gguf`, back otherwise.
fn move_head_rows(w: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let (hf, gg) = (h * hd + s * half + j, h * hd + j * 2 + s);
                let (src, dst) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

impl GgufModel {
    /// Opens a GGUF file and reads its llama config.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let file = GgufFile::open(path)?;
        let config = config_from_gguf(&file)?;
        Ok(Self { file, config })
    }

    /// The config read from the metadata.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
}

fn config_from_gguf(f: &GgufFile) -> Result<LlamaConfig, LlamaError> {
    let path = f.path().display().to_string();
    let err = |field: &str, problem: &str| LlamaError::Config {
        path: path.clone(),
        field: field.into(),
        problem: problem.into(),
    };
    let arch = f
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| err("general.architecture", "missing"))?;
    let model_type = family(arch).ok_or_else(|| {
        err(
            "general.architecture",
            &format!("`{arch}` is not supported (`llama`, `qwen2`, `qwen3`, `phi3`, `gemma3`)"),
        )
    })?;
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| -> Result<usize, LlamaError> {
        let k = key(k);
        f.get(&k)
            .and_then(GgufValue::as_u64)
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .ok_or_else(|| err(&k, "missing or not a positive integer"))
    };
    let opt_uint = |k: &str| {
        f.get(&key(k))
            .and_then(GgufValue::as_u64)
            .map(|v| v as usize)
    };
    let token = |key: &str| f.get(key).and_then(GgufValue::as_u64).map(|v| v as u32);
    let hidden_size = uint("embedding_length")?;
    let heads = uint("attention.head_count")?;
    let kv_heads = opt_uint("attention.head_count_kv").unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(err(
            &key("attention.head_count_kv"),
            &format!("{kv_heads} does not divide head_count {heads}"),
        ));
    }
    let head_dim = match opt_uint("attention.key_length") {
        Some(d) => d,
        None if hidden_size % heads == 0 => hidden_size / heads,
        None => {
            return Err(err(
                &key("attention.head_count"),
                "does not divide embedding_length",
            ));
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(err(
            &key("attention.key_length"),
            "head width must be even and positive",
        ));
    }
    let vocab_size = match opt_uint("vocab_size") {
        Some(v) => v,
        None => match f.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(a)) => a.len(),
            _ => {
                return Err(err(
                    &key("vocab_size"),
                    "missing (and no tokenizer.ggml.tokens)",
                ));
            }
        },
    };
    if model_type != ModelType::Llama && f.tensors.contains_key("rope_freqs.weight") {
        return Err(err(
            "rope_freqs.weight",
            &format!("per-frequency RoPE divisors are read for `llama` files only, not `{arch}`"),
        ));
    }
    if model_type != ModelType::Phi3 && f.tensors.contains_key("rope_factors_long.weight") {
        return Err(err(
            "rope_factors_long.weight",
            &format!("LongRoPE factors are read for `phi3` files only, not `{arch}`"),
        ));
    }
    let theta = f
        .get(&key("rope.freq_base"))
        .and_then(GgufValue::as_f64)
        .unwrap_or(10000.0);
    let scaling_key = key("rope.scaling.type");
    let mut rope = json!({ "rope_type": "default", "rope_theta": theta });
    match f.get(&scaling_key).and_then(GgufValue::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            let factor_key = key("rope.scaling.factor");
            let factor = f
                .get(&factor_key)
                .and_then(GgufValue::as_f64)
                .ok_or_else(|| err(&factor_key, "missing"))?;
            rope = json!({ "rope_type": "linear", "rope_theta": theta, "factor": factor });
        }
        Some(other) => {
            return Err(err(
                &scaling_key,
                &format!("`{other}` is not supported (none, linear)"),
            ));
        }
    }
    let rms_norm_eps = f
        .get(&key("attention.layer_norm_rms_epsilon"))
        .and_then(GgufValue::as_f64)
        .filter(|e| *e > 0.0)
        .ok_or_else(|| {
            err(
                &key("attention.layer_norm_rms_epsilon"),
                "missing or not positive",
            )
        })?;
    let layers = uint("block_count")?;
    // The config as HF writes it, read by the same code as a `config.json` (the family's
    // derivations and checks in one place).
    let mut hf = json!({
        "model_type": model_type.as_str(),
        "hidden_size": hidden_size,
        "intermediate_size": uint("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": rms_norm_eps,
        "vocab_size": vocab_size,
        "max_position_embeddings": opt_uint("context_length").unwrap_or(2048),
        "tie_word_embeddings": !f.tensors.contains_key("output.weight"),
        "bos_token_id": token("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token("tokenizer.ggml.eos_token_id"),
        "pad_token_id": token("tokenizer.ggml.padding_token_id"),
    });
    let window = opt_uint("attention.sliding_window").filter(|&w| w > 0);
    let extra = match model_type {
        ModelType::Llama => json!({
            "attention_bias": f.tensors.contains_key("blk.0.attn_q.bias"),
            "mlp_bias": f.tensors.contains_key("blk.0.ffn_up.bias"),
            "rope_parameters": match rope_freqs(f, theta, head_dim)? {
                Some(_) if rope["rope_type"] != "default" => {
                    return Err(err(
                        "rope_freqs.weight",
                        "beside another RoPE scaling (rope.scaling.type): llama.cpp applies \
                         both, which no HF config says",
                    ));
                }
                Some(divisors) => divisors,
                None => rope,
            },
        }),
        ModelType::Qwen2 | ModelType::Qwen3 => json!({ "rope_parameters": rope }),
        ModelType::Phi3 => {
            let rotary = opt_uint("rope.dimension_count").unwrap_or(head_dim);
            let mut rope = match longrope(f, &key)? {
                Some(mut long) => {
                    long["rope_theta"] = json!(theta);
                    long
                }
                None => rope,
            };
            rope["partial_rotary_factor"] = json!(rotary as f64 / head_dim as f64);
            // Phi-3's class reads its original context at the top level first.
            let original = rope.get("original_max_position_embeddings").cloned();
            json!({
                "rope_parameters": rope,
                "sliding_window": window,
                "original_max_position_embeddings": original,
            })
        }
        ModelType::Gemma3 => {
            gemma3_fields(f, &key, layers, hidden_size / heads, head_dim, window, rope)?
        }
        ModelType::Mistral => unreachable!("llama.cpp writes Mistral models as `llama`"),
    };
    let (Value::Object(all), Value::Object(extra)) = (&mut hf, extra) else {
        unreachable!("JSON objects")
    };
    all.extend(extra);
    LlamaConfig::from_json_str(&hf.to_string(), &path)
}

/// Gemma 3's settings as llama.cpp derives them: the layer pattern from
/// `attention.sliding_window_pattern` (a period, or a flag per layer: true slides) or its
/// default period 6 (every 6th layer full), where `attention.sliding_window` is set (else every
/// layer full); the sliding layers' RoPE base `rope.freq_base_swa` or 10 000; the attention
/// scale `head_dim^-½`, but `(hidden / heads)^-½` for the 62-layer 27B (a GGUF carries no
/// `query_pre_attn_scalar`).
fn gemma3_fields(
    f: &GgufFile,
    key: &dyn Fn(&str) -> String,
    layers: usize,
    width_per_head: usize,
    head_dim: usize,
    window: Option<usize>,
    rope: Value,
) -> Result<Value, LlamaError> {
    let pattern_key = key("attention.sliding_window_pattern");
    let sliding: Vec<bool> = match (window, f.get(&pattern_key)) {
        (None, _) => vec![false; layers],
        (Some(_), Some(GgufValue::Array(flags))) => flags
            .iter()
            .map(|v| match v {
                GgufValue::Bool(b) => Some(*b),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .filter(|v| v.len() == layers)
            .ok_or_else(|| LlamaError::Config {
                path: f.path().display().to_string(),
                field: pattern_key.clone(),
                problem: format!("expected {layers} booleans"),
            })?,
        (Some(_), other) => {
            let period = match other {
                None => 6,
                Some(v) => v
                    .as_u64()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| LlamaError::Config {
                        path: f.path().display().to_string(),
                        field: pattern_key.clone(),
                        problem: format!("expected a period or a flag per layer, found {v:?}"),
                    })? as usize,
            };
            (0..layers).map(|i| i % period < period - 1).collect()
        }
    };
    let layer_types: Vec<&str> = sliding
        .iter()
        .map(|&s| {
            if s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let swa_theta = f
        .get(&key("rope.freq_base_swa"))
        .and_then(GgufValue::as_f64)
        .unwrap_or(10000.0);
    let scalar = if layers == 62 {
        width_per_head
    } else {
        head_dim
    };
    Ok(json!({
        "layer_types": layer_types,
        "sliding_window": window.unwrap_or(4096),
        "query_pre_attn_scalar": scalar,
        "rope_parameters": {
            "full_attention": rope,
            "sliding_attention": { "rope_type": "default", "rope_theta": swa_theta },
        },
    }))
}

/// A `llama` file's `rope_freqs.weight` (how the converter writes Llama 3.1's RoPE scaling):
/// each inverse frequency divided by its entry, at every position, as llama.cpp applies it.
/// That is LongRoPE with equal short and long divisors and no attention factor, which the
/// model runs exactly; `None` for a file without it. Saved as a HF folder, such a model's
/// config says so (`longrope`, equal factors), which transformers runs the same; llama.cpp's
/// converter would not read the divisors back from it (`merge --format gguf` writes them).
fn rope_freqs(f: &GgufFile, theta: f64, head_dim: usize) -> Result<Option<Value>, LlamaError> {
    let name = "rope_freqs.weight";
    if !f.tensors.contains_key(name) {
        return Ok(None);
    }
    let divisors = f.read_f32(name)?.1;
    if divisors.len() != head_dim / 2 || divisors.iter().any(|d| !(*d > 0.0 && d.is_finite())) {
        return Err(LlamaError::Config {
            path: f.path().display().to_string(),
            field: name.into(),
            problem: format!(
                "expected {} positive divisors (one per rotated pair), found {} values",
                head_dim / 2,
                divisors.len()
            ),
        });
    }
    Ok(Some(json!({
        "rope_type": "longrope",
        "rope_theta": theta,
        "short_factor": divisors,
        "long_factor": divisors,
        // Past any position, so the short divisors always apply (they equal the long ones).
        "original_max_position_embeddings": u32::MAX,
        "attention_factor": 1.0,
    })))
}

/// Phi-3's LongRoPE as llama.cpp's `Phi3MiniModel` writes it: the `rope_factors_long` and
/// `rope_factors_short` tensors, `rope.scaling.original_context_length` and
/// `rope.scaling.attn_factor` (derived from the context ratio where absent), as HF
/// `rope_parameters`; `None` for a file without the factors.
fn longrope(f: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<Option<Value>, LlamaError> {
    let path = f.path().display().to_string();
    let err = |field: &str, problem: &str| LlamaError::Config {
        path: path.clone(),
        field: field.into(),
        problem: problem.into(),
    };
    if !f.tensors.contains_key("rope_factors_long.weight") {
        return Ok(None);
    }
    let factors = |name: &str| -> Result<Vec<f32>, LlamaError> {
        if !f.tensors.contains_key(name) {
            return Err(err(name, "missing beside rope_factors_long.weight"));
        }
        Ok(f.read_f32(name)?.1)
    };
    let (long, short) = (
        factors("rope_factors_long.weight")?,
        factors("rope_factors_short.weight")?,
    );
    let original_key = key("rope.scaling.original_context_length");
    let original = f
        .get(&original_key)
        .and_then(GgufValue::as_u64)
        .filter(|&v| v > 1)
        .ok_or_else(|| err(&original_key, "missing or not a context length (LongRoPE)"))?;
    let mut rope = json!({
        "rope_type": "longrope",
        "long_factor": long,
        "short_factor": short,
        "original_max_position_embeddings": original,
    });
    if let Some(a) = f
        .get(&key("rope.scaling.attn_factor"))
        .and_then(GgufValue::as_f64)
    {
        rope["attention_factor"] = json!(a);
    }
    Ok(Some(rope))
}

/// The family of a llama.cpp architecture.
fn family(arch: &str) -> Option<ModelType> {
    match arch {
        "llama" => Some(ModelType::Llama),
        "qwen2" => Some(ModelType::Qwen2),
        "qwen3" => Some(ModelType::Qwen3),
        "phi3" => Some(ModelType::Phi3),
        "gemma3" => Some(ModelType::Gemma3),
        _ => None,
    }
}

impl WeightSource for GgufModel {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name, self.config.model_type)
            .is_some_and(|(g, _)| self.file.tensors.contains_key(&g))
    }

    fn read_float(&self, name: &str) -> Result<HostTensor, LlamaError> {
        let (g, convert) =
            gguf_name(name, self.config.model_type).ok_or_else(|| LlamaError::MissingTensor {
                path: self.describe(),
                tensor: name.to_string(),
            })?;
        let (shape, mut values) = self.file.read_f32(&g).map_err(|e| match e {
            LlamaError::MissingTensor { path, tensor } => LlamaError::MissingTensor {
                path,
                tensor: format!("{tensor} (HF `{name}`)"),
            },
            e => e,
        })?;
        if convert == Convert::UnitOffset {
            for v in &mut values {
                *v -= 1.0;
            }
        }
        if let Convert::Unpermute { is_k } = convert {
            let heads = if is_k {
                self.config.num_key_value_heads
            } else {
                self.config.num_attention_heads
            };
            let rows = shape[0];
            let cols = shape.get(1).copied().unwrap_or(1);
            if rows % heads != 0 || (rows / heads) % 2 != 0 {
                return Err(LlamaError::Shape {
                    path: self.describe(),
                    tensor: g,
                    expected: vec![heads * self.config.head_dim, self.config.hidden_size],
                    found: shape,
                });
            }
            values = unpermute_rows(&values, rows, cols, heads);
        }
        Ok(HostTensor {
            shape,
            values: HostFloats::F32(values),
        })
    }
}
