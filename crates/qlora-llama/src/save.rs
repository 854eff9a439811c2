//! Writing a model as a HF folder (`config.json` + `model.safetensors`) that transformers
//! loads: float (F32 or BF16) or bnb-4bit (the layout `save_pretrained` writes for a model
//! loaded with `load_in_4bit`, plus its `quantization_config`).

use std::path::Path;

use burn::tensor::Tensor;
use qlora_nf4::{Dtype, QuantConfig, QuantizedTensor, RawTensor, bf16};
use qlora_nn::{AdaptedLinear, LoraModel};
use serde_json::{Value, json};

use crate::{LlamaError, LlamaForCausalLM};

/// How weights are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SaveFormat {
    /// Every tensor F32.
    F32,
    /// Every tensor BF16 (rounded to nearest even).
    BF16,
    /// Block linears in bnb-4bit (NF4 layers as they are, float layers quantized with the
    /// config); embeddings, norms and head F32.
    Bnb4(QuantConfig),
}

/// A tensor's values on the host, as f32.
pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

fn float_raw(values: &[f32], shape: Vec<usize>, format: SaveFormat) -> RawTensor<'static> {
    match format {
        SaveFormat::BF16 => RawTensor {
            dtype: Dtype::BF16,
            shape,
            data: values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        },
        _ => RawTensor::f32(shape, values),
    }
}

fn push_float(
    tensors: &mut Vec<(String, RawTensor<'static>)>,
    name: String,
    t: Tensor<2>,
    f: SaveFormat,
) {
    let shape = t.dims().to_vec();
    tensors.push((name, float_raw(&host(t), shape, f)));
}

impl LlamaForCausalLM {
    /// Every norm's weight under its HF name, `[hidden]` (or `[head_dim]` for q/k norms): the
    /// layers' in order, then the final norm.
    pub(crate) fn norm_weights(&self) -> Vec<(String, Tensor<1>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            for (n, norm) in [
                ("input_layernorm", Some(&layer.input_layernorm)),
                (
                    "post_attention_layernorm",
                    Some(&layer.post_attention_layernorm),
                ),
                (
                    "pre_feedforward_layernorm",
                    layer.pre_feedforward_layernorm.as_ref(),
                ),
                (
                    "post_feedforward_layernorm",
                    layer.post_feedforward_layernorm.as_ref(),
                ),
                ("self_attn.q_norm", attn.q_norm.as_ref()),
                ("self_attn.k_norm", attn.k_norm.as_ref()),
            ] {
                if let Some(norm) = norm {
                    out.push((format!("model.layers.{i}.{n}.weight"), norm.weight.val()));
                }
            }
        }
        out.push(("model.norm.weight".into(), self.model.norm.weight.val()));
        out
    }

    /// Writes the model to `dir` (created if needed) as `format` says. Every file goes through
    /// a temporary name and a rename. Errors if a layer still holds adapters: merge them
    /// ([`LlamaForCausalLM::merge_and_unload`]) or save them apart as a PEFT adapter.
    pub fn save_hf(&self, dir: impl AsRef<Path>, format: SaveFormat) -> Result<(), LlamaError> {
        let dir = dir.as_ref();
        let mut tensors: Vec<(String, RawTensor<'static>)> = Vec::new();
        let head_format = match format {
            SaveFormat::Bnb4(_) => SaveFormat::F32,
            f => f,
        };
        // Vectors travel as [1, n] and are stored 1-D.
        let mut vectors = std::collections::BTreeSet::new();
        let mut vector = |name: String, t: Tensor<1>| {
            vectors.insert(name.clone());
            (name, t.unsqueeze::<2>())
        };
        push_float(
            &mut tensors,
            "model.embed_tokens.weight".into(),
            self.model.embed_tokens.weight.val(),
            head_format,
        );
        for (name, t) in self.norm_weights() {
            let (name, t) = vector(name, t);
            push_float(&mut tensors, name, t, head_format);
        }
        if let Some(w) = &self.lm_head {
            push_float(&mut tensors, "lm_head.weight".into(), w.val(), head_format);
        }
        for (path, layer) in self.linears() {
            let wname = format!("{path}.weight");
            let (dense, quantized, bias) = match layer {
                AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => (
                    Some(l.weight.val().transpose()),
                    None,
                    l.bias.as_ref().map(|b| b.val()),
                ),
                AdaptedLinear::Lora(_) | AdaptedLinear::QLora(_)
                    if layer.adapters().is_some_and(|a| !a.names().is_empty()) =>
                {
                    return Err(LlamaError::format(
                        dir,
                        format!(
                            "`{path}` holds adapters: merge them (merge_and_unload) or save them as a PEFT adapter"
                        ),
                    ));
                }
                AdaptedLinear::Lora(l) => (
                    Some(l.base.weight.val().transpose()),
                    None,
                    l.base.bias.as_ref().map(|b| b.val()),
                ),
                AdaptedLinear::QLora(l) => (
                    None,
                    Some(l.base.to_quantized()),
                    l.bias.as_ref().map(|b| b.val()),
                ),
            };
            let quantized = match (format, dense, quantized) {
                (SaveFormat::Bnb4(_), None, Some(q)) => Some(q),
                (SaveFormat::Bnb4(config), Some(w), None) => {
                    let shape = w.dims();
                    Some(
                        QuantizedTensor::quantize(&wname, &host(w), &shape, config).map_err(
                            |source| LlamaError::Nf4 {
                                path: dir.display().to_string(),
                                source,
                            },
                        )?,
                    )
                }
                (f, Some(w), None) => {
                    push_float(&mut tensors, wname.clone(), w, f);
                    None
                }
                (f, None, Some(q)) => {
                    let shape = q.shape.clone();
                    tensors.push((wname.clone(), float_raw(&q.dequantize_f32(), shape, f)));
                    None
                }
                _ => unreachable!("a layer is dense or quantized"),
            };
            if let Some(q) = quantized {
                tensors.extend(q.to_bnb(&wname));
            }
            if let Some(b) = bias {
                let (name, t) = vector(format!("{path}.bias"), b);
                push_float(&mut tensors, name, t, head_format);
            }
        }
        for (name, t) in &mut tensors {
            if vectors.contains(name) {
                t.shape.remove(0);
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| LlamaError::io(dir, e))?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
                .map_err(|e| LlamaError::format(dir, format!("serializing: {e}")))?;
        write(&dir.join("model.safetensors"), &bytes)?;
        let mut config: Value =
            serde_json::from_str(&self.config.to_hf_json()).expect("config JSON");
        match format {
            SaveFormat::BF16 => {
                config["dtype"] = json!("bfloat16");
                config["torch_dtype"] = json!("bfloat16");
            }
            SaveFormat::F32 => {}
            SaveFormat::Bnb4(q) => {
                config["quantization_config"] = json!({
                    "_load_in_4bit": true,
                    "_load_in_8bit": false,
                    "bnb_4bit_compute_dtype": "float32",
                    "bnb_4bit_quant_storage": "uint8",
                    "bnb_4bit_quant_type": q.quant_type.as_str(),
                    "bnb_4bit_use_double_quant": q.double_quant,
                    "llm_int8_enable_fp32_cpu_offload": false,
                    "llm_int8_has_fp16_weight": false,
                    "llm_int8_skip_modules": null,
                    "llm_int8_threshold": 6.0,
                    "load_in_4bit": true,
                    "load_in_8bit": false,
                    "quant_method": "bitsandbytes"
                });
            }
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON") + "\n";
        write(&dir.join("config.json"), text.as_bytes())
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), LlamaError> {
    qlora_nn::write_atomic(path, bytes).map_err(LlamaError::Lora)
}
