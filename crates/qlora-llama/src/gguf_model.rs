//! A llama-architecture GGUF file as a [`WeightSource`] with HF names: its config from the
//! metadata, tensors renamed (`blk.N.attn_q` → `model.layers.N.self_attn.q_proj`, ...),
//! dequantized to f32, and Q/K rows un-permuted from llama.cpp's interleaved RoPE order back to
//! HF's `rotate_half` order.

use std::path::Path;

use crate::gguf::{GgufFile, GgufValue};
use crate::{
    HiddenAct, HostFloats, HostTensor, LlamaConfig, LlamaError, ModelType, RopeConfig, RopeScaling,
    WeightSource,
};

/// A GGUF model file (see the module docs).
#[derive(Debug)]
pub struct GgufModel {
    /// The file.
    pub file: GgufFile,
    config: LlamaConfig,
}

/// The GGUF name of HF tensor `name` and whether it is a permuted Q (`Some(false)`) or
/// K (`Some(true)`) weight.
fn gguf_name(name: &str) -> Option<(String, Option<bool>)> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), None));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (g, perm) = match module {
        "input_layernorm" => ("attn_norm", None),
        "post_attention_layernorm" => ("ffn_norm", None),
        "self_attn.q_proj" => ("attn_q", Some(false)),
        "self_attn.k_proj" => ("attn_k", Some(true)),
        "self_attn.v_proj" => ("attn_v", None),
        "self_attn.o_proj" => ("attn_output", None),
        "mlp.gate_proj" => ("ffn_gate", None),
        "mlp.up_proj" => ("ffn_up", None),
        "mlp.down_proj" => ("ffn_down", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{g}.{kind}"), perm))
}

/// Undoes llama.cpp's Q/K permutation: rows `[heads, head_dim/2, 2]` → `[heads, 2, head_dim/2]`.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let src = h * hd + j * 2 + s;
                let dst = h * hd + s * half + j;
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
    if arch != "llama" {
        return Err(err(
            "general.architecture",
            &format!("`{arch}` is not supported (only `llama`)"),
        ));
    }
    let uint = |key: &str| -> Result<usize, LlamaError> {
        f.get(key)
            .and_then(GgufValue::as_u64)
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .ok_or_else(|| err(key, "missing or not a positive integer"))
    };
    let opt_uint = |key: &str| f.get(key).and_then(GgufValue::as_u64).map(|v| v as usize);
    let token = |key: &str| f.get(key).and_then(GgufValue::as_u64).map(|v| v as u32);
    let hidden_size = uint("llama.embedding_length")?;
    let heads = uint("llama.attention.head_count")?;
    let kv_heads = opt_uint("llama.attention.head_count_kv").unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(err(
            "llama.attention.head_count_kv",
            &format!("{kv_heads} does not divide head_count {heads}"),
        ));
    }
    let head_dim = match opt_uint("llama.attention.key_length") {
        Some(d) => d,
        None if hidden_size % heads == 0 => hidden_size / heads,
        None => {
            return Err(err(
                "llama.attention.head_count",
                "does not divide embedding_length",
            ));
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(err(
            "llama.attention.key_length",
            "head width must be even and positive",
        ));
    }
    let vocab_size = match opt_uint("llama.vocab_size") {
        Some(v) => v,
        None => match f.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(a)) => a.len(),
            _ => {
                return Err(err(
                    "llama.vocab_size",
                    "missing (and no tokenizer.ggml.tokens)",
                ));
            }
        },
    };
    if f.tensors.contains_key("rope_freqs.weight") {
        return Err(err(
            "rope_freqs.weight",
            "per-frequency RoPE factors (llama 3.1 scaling in GGUF) are not supported",
        ));
    }
    let theta = f
        .get("llama.rope.freq_base")
        .and_then(GgufValue::as_f64)
        .unwrap_or(10000.0);
    let scaling = match f.get("llama.rope.scaling.type").and_then(GgufValue::as_str) {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => RopeScaling::Linear {
            factor: f
                .get("llama.rope.scaling.factor")
                .and_then(GgufValue::as_f64)
                .ok_or_else(|| err("llama.rope.scaling.factor", "missing"))?,
        },
        Some(other) => {
            return Err(err(
                "llama.rope.scaling.type",
                &format!("`{other}` is not supported (none, linear)"),
            ));
        }
    };
    let rms_norm_eps = f
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(GgufValue::as_f64)
        .filter(|e| *e > 0.0)
        .ok_or_else(|| {
            err(
                "llama.attention.layer_norm_rms_epsilon",
                "missing or not positive",
            )
        })?;
    let attention_bias = f.tensors.contains_key("blk.0.attn_q.bias");
    let mlp_bias = f.tensors.contains_key("blk.0.ffn_up.bias");
    Ok(LlamaConfig {
        model_type: ModelType::Llama,
        hidden_size,
        intermediate_size: uint("llama.feed_forward_length")?,
        num_hidden_layers: uint("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps,
        vocab_size,
        max_position_embeddings: opt_uint("llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !f.tensors.contains_key("output.weight"),
        bos_token_id: token("tokenizer.ggml.bos_token_id"),
        eos_token_ids: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: token("tokenizer.ggml.padding_token_id"),
        attention_bias,
        qkv_bias: false,
        qk_norm: false,
        sliding_window: None,
        layer_types: None,
        rope_sliding: None,
        query_pre_attn_scalar: None,
        hidden_act: HiddenAct::Silu,
        norm_unit_offset: false,
        scale_embeddings: false,
        sandwich_norms: false,
        fused_projections: false,
        rotary_dim: head_dim,
        mlp_bias,
        rope: RopeConfig { theta, scaling },
    })
}

impl WeightSource for GgufModel {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|(g, _)| self.file.tensors.contains_key(&g))
    }

    fn read_float(&self, name: &str) -> Result<HostTensor, LlamaError> {
        let (g, perm) = gguf_name(name).ok_or_else(|| LlamaError::MissingTensor {
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
        if let Some(is_k) = perm {
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
