//! A model (merged, or without adapters) as a llama.cpp GGUF model file, in the layout
//! llama.cpp's `convert_hf_to_gguf.py` writes (`merge --format gguf`):
//!
//! - `general.architecture` (`llama` for LLaMA and Mistral, `qwen2`, `qwen3`, `phi3`, `gemma3`),
//!   `general.type = "model"`, `general.name`, `general.file_type`,
//!   `general.quantization_version`;
//! - the architecture's hyperparameters as the converter's model class writes them
//!   ([`llama_keys`], [`phi3_keys`], [`gemma3_keys`]; a Gemma 3 that llama.cpp would run
//!   differently is refused, see there). For llama and Qwen the converter writes
//!   `key_length` / `value_length` only where `config.json` names `head_dim`; they are always
//!   written here (the value llama.cpp derives otherwise), which changes nothing it reads;
//! - RoPE scaling: linear as `rope.scaling.type` / `factor`; Llama 3.1's as the converter's
//!   `rope_freqs.weight` divisors; Phi-3's LongRoPE as `rope_factors_long` / `_short` and
//!   `rope.scaling.attn_factor`;
//! - the tokenizer (`gguf_export_tokenizer`): a GGUF base's `tokenizer.*` keys as they are, or
//!   a HF folder's SentencePiece `tokenizer.model` or byte-level BPE `tokenizer.json`;
//! - tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, Phi-3's fused `attn_qkv`
//!   and `ffn_up`, Gemma's norms as `1 + w`, ...), vectors F32 and matrices in the chosen type
//!   (F32, F16, BF16 or Q8_0; Q8_0 falls back to F16 where a row is not a multiple of 32 long,
//!   as the converter does), `llama`'s Q and K rows permuted to llama.cpp's interleaved RoPE
//!   order.
//!
//! Not written, and refused by name: tokenizers that are neither (a HF `tokenizer.json` of
//! another kind without `tokenizer.model`), a Gemma 3 folder without `tokenizer.model`, and
//! RoPE scalings other than those above.

use std::path::Path;

use burn::tensor::Tensor;
use qlora_nn::{AdaptedLinear, LoraModel};

use crate::gguf::{GgmlType, GgufValue};
use crate::gguf_export_tokenizer::tokenizer_meta;
use crate::gguf_model::{Convert, gguf_name, permute_rows};
use crate::save::host;
use crate::{
    GgufWriter, LayerType, LlamaConfig, LlamaError, LlamaForCausalLM, ModelType, RopeScaling,
};

/// GGUF's `general.file_type` of a model whose matrices are `ty` (llama.cpp's `LLAMA_FTYPE_*`).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
    }
}

/// A tensor under its HF name: PyTorch shape and f32 values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

impl LlamaForCausalLM {
    /// Writes the model as a GGUF model file at `path` (see the module docs), its matrices as
    /// `ty` (F32, F16, BF16 or Q8_0), the tokenizer taken from `tokenizer` (the base's HF
    /// folder or `.gguf` file), `name` as `general.name`. Errors, before writing anything, if a
    /// layer still holds adapters (merge them first), or the family, tokenizer or RoPE scaling
    /// is one this writer does not handle.
    pub fn save_gguf(
        &self,
        path: impl AsRef<Path>,
        ty: GgmlType,
        tokenizer: impl AsRef<Path>,
        name: &str,
    ) -> Result<(), LlamaError> {
        let path = path.as_ref();
        let c = &self.config;
        let (mut w, family) = gguf_header(c, path, ty, tokenizer.as_ref(), name)?;
        let refuse = |problem: String| LlamaError::format(path, problem);
        for (hf, shape, data) in self.dense_tensors(path)? {
            let (gname, convert) = gguf_name(&hf, family)
                .ok_or_else(|| refuse(format!("`{hf}` has no llama.cpp tensor name")))?;
            let data = match convert {
                Convert::Same => data,
                Convert::Unpermute { is_k } => {
                    let heads = if is_k {
                        c.num_key_value_heads
                    } else {
                        c.num_attention_heads
                    };
                    let cols = shape.get(1).copied().unwrap_or(1);
                    permute_rows(&data, shape[0], cols, heads)
                }
                // Gemma's norms as llama.cpp keeps them, `1 + w` (the converter's norm_shift).
                Convert::UnitOffset => data.iter().map(|v| v + 1.0).collect(),
            };
            let t = match ty {
                _ if shape.len() == 1 => GgmlType::F32,
                GgmlType::Q8_0 if !shape[shape.len() - 1].is_multiple_of(32) => GgmlType::F16,
                t => t,
            };
            w.tensor(&gname, &shape, t, &data);
        }
        w.write(path)
    }

    /// The checks [`LlamaForCausalLM::save_gguf`] makes before any tensor (family, tensor type,
    /// RoPE scaling, tokenizer), for a model of `config`: callers run them before a long merge.
    pub fn check_gguf_export(
        config: &LlamaConfig,
        path: impl AsRef<Path>,
        ty: GgmlType,
        tokenizer: impl AsRef<Path>,
    ) -> Result<(), LlamaError> {
        gguf_header(config, path.as_ref(), ty, tokenizer.as_ref(), "check").map(|_| ())
    }

    /// Every tensor as HF names it, with its PyTorch shape and values (f32; an NF4 layer
    /// dequantized). Errors if a layer holds adapters.
    fn dense_tensors(&self, path: &Path) -> Result<Vec<NamedTensor>, LlamaError> {
        let mut out = Vec::new();
        let mut matrix = |name: String, t: Tensor<2>| {
            let shape = t.dims().to_vec();
            out.push((name, shape, host(t)));
        };
        matrix(
            "model.embed_tokens.weight".into(),
            self.model.embed_tokens.weight.val(),
        );
        if let Some(w) = &self.lm_head {
            matrix("lm_head.weight".into(), w.val());
        }
        for (p, layer) in self.linears() {
            let weight = match &layer {
                AdaptedLinear::Lora(_) | AdaptedLinear::QLora(_)
                    if layer.adapters().is_some_and(|a| !a.names().is_empty()) =>
                {
                    return Err(LlamaError::format(
                        path,
                        format!("`{p}` holds adapters: merge them first (merge_and_unload)"),
                    ));
                }
                AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.weight.val().transpose(),
                other => other.base_weight().expect("a base weight"),
            };
            matrix(format!("{p}.weight"), weight);
        }
        let mut vectors: Vec<(String, Tensor<1>)> = self.norm_weights();
        for (p, layer) in self.linears() {
            let bias = match layer {
                AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.bias.as_ref(),
                AdaptedLinear::Lora(l) => l.base.bias.as_ref(),
                AdaptedLinear::QLora(l) => l.bias.as_ref(),
            };
            if let Some(b) = bias {
                vectors.push((format!("{p}.bias"), b.val()));
            }
        }
        for (name, t) in vectors {
            let shape = t.dims().to_vec();
            out.push((name, shape, host(t)));
        }
        Ok(out)
    }
}

/// The GGUF file's metadata for a model of `c` (every check but the tensors'), with the RoPE
/// divisor tensors where the scaling has them, and the family whose tensor names it uses.
fn gguf_header(
    c: &LlamaConfig,
    path: &Path,
    ty: GgmlType,
    tokenizer: &Path,
    name: &str,
) -> Result<(GgufWriter, ModelType), LlamaError> {
    let refuse = |problem: String| LlamaError::format(path, problem);
    let arch = match c.model_type {
        ModelType::Llama | ModelType::Mistral => "llama",
        ModelType::Qwen2 => "qwen2",
        ModelType::Qwen3 => "qwen3",
        ModelType::Phi3 => "phi3",
        ModelType::Gemma3 => "gemma3",
    };
    if !matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        return Err(refuse(format!(
            "{ty:?} tensors (F32, F16, BF16 or Q8_0 are written)"
        )));
    }
    let family = if arch == "llama" {
        ModelType::Llama
    } else {
        c.model_type
    };
    let mut w = GgufWriter::new();
    w.meta("general.architecture", GgufValue::Str(arch.into()))
        .meta("general.type", GgufValue::Str("model".into()))
        .meta("general.name", GgufValue::Str(name.into()))
        .meta("general.file_type", GgufValue::U32(file_type(ty)));
    let keys = match arch {
        "phi3" => phi3_keys(c),
        "gemma3" => gemma3_keys(c).map_err(refuse)?,
        _ => llama_keys(c, arch == "llama"),
    };
    for (k, v) in keys {
        w.meta(&format!("{arch}.{k}"), v);
    }
    let key = |k: &str| format!("{arch}.{k}");
    let divisors = |w: &mut GgufWriter, name: &str, f: &[f64]| {
        let f: Vec<f32> = f.iter().map(|&v| v as f32).collect();
        w.tensor(name, &[f.len()], GgmlType::F32, &f);
    };
    match &c.rope.scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } if arch != "phi3" => {
            w.meta(&key("rope.scaling.type"), GgufValue::Str("linear".into()))
                .meta(&key("rope.scaling.factor"), GgufValue::F32(*factor as f32));
        }
        RopeScaling::Llama3 { .. } if arch == "llama" => {
            let f = llama3_rope_factors(c);
            w.tensor("rope_freqs.weight", &[f.len()], GgmlType::F32, &f);
        }
        // A `llama` file's own per-frequency divisors, read back (`gguf_model`): as they were.
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            attention_factor,
            ..
        } if arch == "llama" && short_factor == long_factor && *attention_factor == 1.0 => {
            divisors(&mut w, "rope_freqs.weight", short_factor)
        }
        // Phi-3's LongRoPE as the converter's `Phi3MiniModel` writes it (the original context
        // is among `phi3_keys`). The converter derives the attention factor from the context
        // ratio whatever the config says; this writes the one the model runs with, which is
        // that unless `config.json` gives another.
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            attention_factor,
            ..
        } if arch == "phi3" => {
            w.meta(
                &key("rope.scaling.attn_factor"),
                GgufValue::F32(*attention_factor as f32),
            );
            divisors(&mut w, "rope_factors_long.weight", long_factor);
            divisors(&mut w, "rope_factors_short.weight", short_factor);
        }
        other => {
            return Err(refuse(format!(
                "RoPE scaling {other:?} is not written as GGUF for `{arch}` yet (none, linear \
                 and llama3 for llama/qwen; none and longrope for phi3)"
            )));
        }
    }
    w.meta("general.quantization_version", GgufValue::U32(2));
    for (k, v) in tokenizer_meta(tokenizer, c.vocab_size, c.model_type)? {
        w.meta(&k, v);
    }
    Ok((w, family))
}

/// The hyperparameters the converter's `LlamaModel` / `Qwen2Model` / `Qwen3Model` write, under
/// the architecture's prefix.
fn llama_keys(c: &LlamaConfig, llama: bool) -> Vec<(&'static str, GgufValue)> {
    let u = |v: usize| GgufValue::U32(v as u32);
    let mut keys = vec![
        ("block_count", u(c.num_hidden_layers)),
        ("context_length", u(c.max_position_embeddings)),
        ("embedding_length", u(c.hidden_size)),
        ("feed_forward_length", u(c.intermediate_size)),
        ("attention.head_count", u(c.num_attention_heads)),
        ("attention.head_count_kv", u(c.num_key_value_heads)),
        ("rope.freq_base", GgufValue::F32(c.rope.theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
        ("attention.key_length", u(c.head_dim)),
        ("attention.value_length", u(c.head_dim)),
        ("vocab_size", u(c.vocab_size)),
    ];
    // The converter writes the rotated width for `llama` only (the others rotate whole heads,
    // which llama.cpp assumes without it).
    if llama {
        keys.push(("rope.dimension_count", u(c.rotary_dim)));
    }
    keys
}

/// The hyperparameters the converter's `Gemma3Model` writes (its base class's and its own:
/// both RoPE bases, head widths, the window). llama.cpp reads no layer pattern or attention
/// scale from the file: it runs five sliding-window layers then a full one, repeated, and
/// scales by `head_dim^-½` (`(hidden/heads)^-½` for the 62-layer 27B) and runs the local RoPE
/// at theta 10000 unscaled, so a config that differs (the window pattern,
/// `query_pre_attn_scalar`, the local RoPE) is refused by name.
fn gemma3_keys(c: &LlamaConfig) -> Result<Vec<(&'static str, GgufValue)>, String> {
    let layers = c.num_hidden_layers;
    let llama_cpp_type = |i: usize| {
        if i % 6 < 5 {
            LayerType::Sliding
        } else {
            LayerType::Full
        }
    };
    if let Some(i) = (0..layers).find(|&i| c.layer_type(i) != llama_cpp_type(i)) {
        return Err(format!(
            "layer {i} is {} attention; llama.cpp runs Gemma 3 as five sliding-window layers then \
             a full one, repeated, and reads no pattern from the file",
            c.layer_type(i).as_str()
        ));
    }
    let scalar = if layers == 62 {
        c.hidden_size / c.num_attention_heads
    } else {
        c.head_dim
    };
    if c.query_pre_attn_scalar != Some(scalar as f64) {
        return Err(format!(
            "query_pre_attn_scalar {:?}: llama.cpp scales attention by {scalar}^-1/2 for a \
             {layers}-layer Gemma 3 and reads no scale from the file",
            c.query_pre_attn_scalar
        ));
    }
    let local = match &c.rope_sliding {
        // llama.cpp sets the local base to 10000 whatever the file says.
        Some(r) if r.scaling == RopeScaling::Default && r.theta == 10000.0 => r.theta,
        Some(r) => {
            return Err(format!(
                "the sliding layers' RoPE (theta {}, scaling {:?}): llama.cpp runs them with \
                 theta 10000 and no scaling, whatever the file says",
                r.theta, r.scaling
            ));
        }
        None => return Err("no RoPE for the sliding layers".into()),
    };
    // The base class's keys (llama's, without the vocabulary size) and the local RoPE base.
    let mut keys: Vec<_> = llama_keys(c, false)
        .into_iter()
        .filter(|(k, _)| *k != "vocab_size")
        .collect();
    keys.push(("rope.freq_base_swa", GgufValue::F32(local as f32)));
    if let Some(w) = c.sliding_window {
        keys.push(("attention.sliding_window", GgufValue::U32(w as u32)));
    }
    Ok(keys)
}

/// The hyperparameters the converter's `Phi3MiniModel` writes (no vocabulary size or head
/// widths; the window 0 where there is none). Its `rope.scaling.original_context_length` is
/// LongRoPE's original context, else `config.json`'s top-level one, which a model without
/// LongRoPE never reads and the config here does not keep: the longest context stands in
/// (equal in Phi-3-mini-4k's config).
fn phi3_keys(c: &LlamaConfig) -> Vec<(&'static str, GgufValue)> {
    let u = |v: usize| GgufValue::U32(v as u32);
    let original = match c.rope.scaling {
        RopeScaling::LongRope {
            original_max_position_embeddings,
            ..
        } => original_max_position_embeddings,
        _ => c.max_position_embeddings,
    };
    vec![
        ("context_length", u(c.max_position_embeddings)),
        ("rope.scaling.original_context_length", u(original)),
        ("embedding_length", u(c.hidden_size)),
        ("feed_forward_length", u(c.intermediate_size)),
        ("block_count", u(c.num_hidden_layers)),
        ("attention.head_count", u(c.num_attention_heads)),
        ("attention.head_count_kv", u(c.num_key_value_heads)),
        (
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
        ("rope.dimension_count", u(c.rotary_dim)),
        ("rope.freq_base", GgufValue::F32(c.rope.theta as f32)),
        ("attention.sliding_window", u(c.sliding_window.unwrap_or(0))),
    ]
}

/// Llama 3.1's RoPE scaling as llama.cpp keeps it: one divisor per rotated pair
/// (`rope_freqs.weight`), computed as the converter computes it, in f32: 1 in the
/// high-frequency band, `factor` in the low one, `1 / ((1 − smooth)/factor + smooth)` between.
fn llama3_rope_factors(c: &LlamaConfig) -> Vec<f32> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: old,
    } = c.rope.scaling
    else {
        unreachable!("called for llama3 scaling")
    };
    let (factor, low, high, old) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
        old as f32,
    );
    // The rotated width, as the model rotates (the converter takes head_dim: the same for
    // every llama model it reads, which rotates whole heads).
    let dim = c.rotary_dim;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / (c.rope.theta as f32).powf(i as f32 / dim as f32);
            let wavelen = std::f32::consts::TAU / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}
