//! A PEFT LoRA adapter as a GGUF LoRA adapter for llama.cpp (`llama-cli --lora`,
//! `llama-server`), in the form llama.cpp's `convert_lora_to_gguf.py` writes:
//!
//! - metadata `general.architecture` (llama.cpp's name for the base: `llama` for LLaMA and
//!   Mistral, `qwen2`, `qwen3`, `phi3`, `gemma3`), `general.type = "adapter"`,
//!   `adapter.type = "lora"`, `adapter.lora.alpha` (float32), `general.quantization_version`;
//! - per adapted linear `blk.N.<name>.weight.lora_a` (PyTorch `[r, in]`) and `.lora_b`
//!   (`[out, r]`), named as the base's GGUF tensors are (`attn_q`, `ffn_down`, Phi-3's fused
//!   `attn_qkv` and `ffn_up`);
//! - for llama.cpp's `llama` architecture, `lora_b` of q and k with its rows permuted as
//!   `convert_hf_to_gguf.py` permutes the base's (llama.cpp's interleaved RoPE order: P(W + BA)
//!   = PW + (PB)A), with the heads of q and the key/value heads of k;
//! - the scaling left to llama.cpp (`alpha / r` at run time, r read from `lora_b`'s shape), as
//!   the converter leaves it; where PEFT's scaling is not `lora_alpha / r` for every module
//!   (rsLoRA, `alpha_pattern`, `rank_pattern` with one alpha), each module's scaling is folded
//!   into its `lora_b` and `adapter.lora.alpha` is 0, which llama.cpp reads as a scale of 1.
//!
//! llama.cpp's adapters hold only LoRA pairs: DoRA, `modules_to_save`, trainable tokens and LoRA on
//! the embedding are refused by name (the converter refuses the first too), as is a LoRA on a
//! tied `lm_head` (the base has no `output.weight` to adapt).

use std::path::Path;

use qlora_nn::{LoraMatcher, PeftAdapter};

use crate::gguf::{GgmlType, GgufValue};
use crate::gguf_model::{Convert, gguf_name, permute_rows};
use crate::{GgufWriter, LlamaConfig, LlamaError, ModelType};

/// llama.cpp's architecture name for `model_type`, and the family whose GGUF naming it follows.
fn arch(model_type: ModelType) -> (&'static str, ModelType) {
    match model_type {
        ModelType::Llama | ModelType::Mistral => ("llama", ModelType::Llama),
        ModelType::Qwen2 => ("qwen2", ModelType::Qwen2),
        ModelType::Qwen3 => ("qwen3", ModelType::Qwen3),
        ModelType::Phi3 => ("phi3", ModelType::Phi3),
        ModelType::Gemma3 => ("gemma3", ModelType::Gemma3),
    }
}

/// Writes `adapter` (for a base of `config`) as a GGUF LoRA adapter at `path`, its tensors as
/// `ty` (F32, F16, BF16 or Q8_0; with Q8_0, tensors whose rows are not a multiple of 32 long,
/// such as `lora_b`'s `r`, are F16, as the converter falls back).
pub fn save_gguf_lora(
    adapter: &PeftAdapter,
    config: &LlamaConfig,
    ty: GgmlType,
    path: impl AsRef<Path>,
) -> Result<(), LlamaError> {
    let path = path.as_ref();
    let source = adapter
        .source
        .as_ref()
        .map_or_else(|| "the adapter".to_string(), |p| p.display().to_string());
    let refuse = |problem: String| LlamaError::Format {
        path: source.clone(),
        problem: format!("cannot be written as a GGUF LoRA adapter: {problem}"),
    };
    if !matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        return Err(refuse(format!(
            "{ty:?} tensors (F32, F16, BF16 or Q8_0, as convert_lora_to_gguf.py writes)"
        )));
    }
    if !adapter.saved.is_empty() {
        let names: Vec<&str> = adapter.saved.keys().map(String::as_str).collect();
        return Err(refuse(format!(
            "it holds full tensors of `modules_to_save` ({}), which llama.cpp's adapters cannot \
             (merge it instead: `merge --format gguf-*`)",
            names.join(", ")
        )));
    }
    if adapter.config.use_dora || adapter.modules.values().any(|w| w.magnitude.is_some()) {
        return Err(refuse(
            "it is a DoRA adapter (`use_dora`), and llama.cpp's adapters hold only LoRA pairs \
             (merge it instead)"
                .into(),
        ));
    }
    if !adapter.tokens.is_empty() {
        return Err(refuse(
            "it trains token rows (`trainable_token_indices`), which llama.cpp's adapters cannot \
             hold (merge it instead)"
                .into(),
        ));
    }
    let (arch, family) = arch(config.model_type);
    let matcher = LoraMatcher::new(&adapter.config)
        .map_err(|(field, problem)| refuse(format!("`{field}`: {problem}")))?;
    let alpha = adapter.config.lora_alpha;
    // Each module's pair, its GGUF name and conversion, and PEFT's scaling for it.
    let mut pairs = Vec::new();
    for (module, w) in &adapter.modules {
        let hf = format!("{module}.weight");
        if module.ends_with("embed_tokens") {
            return Err(refuse(format!(
                "a LoRA on the embedding `{module}` (merge it instead)"
            )));
        }
        if module == "lm_head" && config.tie_word_embeddings {
            return Err(refuse(
                "a LoRA on `lm_head`, which the base ties to its embedding (no `output.weight` \
                 in its GGUF file to adapt)"
                    .into(),
            ));
        }
        let (name, convert) = gguf_name(&hf, family)
            .ok_or_else(|| refuse(format!("`{module}` has no llama.cpp tensor name")))?;
        let [r, k] = w.lora_a.dims();
        let [n, r_b] = w.lora_b.dims();
        if r != r_b {
            return Err(refuse(format!(
                "`{module}`: lora_A has rank {r}, lora_B {r_b}"
            )));
        }
        let a = floats(&w.lora_a, &source, module)?;
        let mut b = floats(&w.lora_b, &source, module)?;
        match convert {
            Convert::Same => {}
            Convert::Unpermute { is_k } => {
                let heads = if is_k {
                    config.num_key_value_heads
                } else {
                    config.num_attention_heads
                };
                // The permutation moves rows within each head: the adapter must be the base's.
                if n != heads * config.head_dim || !config.head_dim.is_multiple_of(2) {
                    return Err(refuse(format!(
                        "`{module}`: lora_B has {n} rows, but the base has {heads} heads of \
                         {} (is the adapter for this base?)",
                        config.head_dim
                    )));
                }
                b = permute_rows(&b, n, r, heads);
            }
            Convert::UnitOffset => {
                return Err(refuse(format!("`{module}` is a norm, not a linear")));
            }
        }
        pairs.push((name, [r, k], a, [n, r], b, matcher.scaling(module)));
    }
    // llama.cpp scales by alpha / r; where PEFT's scaling differs for any module, fold each
    // module's own into lora_b and write alpha 0 (a scale of 1).
    let uniform = pairs
        .iter()
        .all(|(_, [r, _], .., s)| (alpha / *r as f64 - s).abs() <= 1e-12 * s.abs());
    let mut w = GgufWriter::new();
    w.meta("general.architecture", GgufValue::Str(arch.into()))
        .meta("general.type", GgufValue::Str("adapter".into()))
        .meta("adapter.type", GgufValue::Str("lora".into()))
        .meta(
            "adapter.lora.alpha",
            GgufValue::F32(if uniform { alpha as f32 } else { 0.0 }),
        )
        .meta("general.quantization_version", GgufValue::U32(2));
    for (name, a_shape, a, b_shape, mut b, s) in pairs {
        if !uniform {
            for x in &mut b {
                *x = (*x as f64 * s) as f32;
            }
        }
        for (suffix, shape, values) in [("lora_a", a_shape, a), ("lora_b", b_shape, b)] {
            let t = match ty {
                GgmlType::Q8_0 if shape[1] % 32 != 0 => GgmlType::F16,
                t => t,
            };
            w.tensor(&format!("{name}.{suffix}"), &shape, t, &values);
        }
    }
    w.write(path)
}

/// A tensor's values as f32, row-major.
fn floats(t: &burn::tensor::Tensor<2>, source: &str, module: &str) -> Result<Vec<f32>, LlamaError> {
    t.to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| LlamaError::Format {
            path: source.to_string(),
            problem: format!("`{module}`: its weights cannot be read: {e:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuting_rows_undoes_unpermuting_them() {
        let (rows, cols, heads) = (24, 3, 2);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = permute_rows(&w, rows, cols, heads);
        assert_ne!(p, w);
        assert_eq!(crate::unpermute_rows(&p, rows, cols, heads), w);
    }
}
