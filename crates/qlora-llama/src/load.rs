//! Building a [`LlamaForCausalLM`] from a [`WeightSource`], one tensor at a time.
//!
//! Each linear weight is read, quantized on the host when the [`LoraApplier`] asks for NF4
//! (quantize-on-load), and uploaded; its dense copy is dropped before the next is read, so the
//! peak is the model as stored plus one dense tensor. A bnb-4bit weight is uploaded as it is
//! (no re-quantization). Embeddings, norms and the head stay float (f32) and frozen.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use qlora_nf4::QuantizedTensor;
use qlora_nn::{AdaptedLinear, LoraApplier, LoraError, LoraModel, ModuleKind, QLoraLinear};

use crate::{
    GgufModel, HfCheckpoint, HostFloats, LlamaAttention, LlamaConfig, LlamaDecoderLayer,
    LlamaError, LlamaForCausalLM, LlamaMlp, LlamaModel, RmsNorm, WeightSource,
};

/// Reads a float tensor, checking its shape and that every value is finite.
fn float(src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<HostFloats, LlamaError> {
    let t = src.read_float(name)?;
    if t.shape != shape {
        return Err(LlamaError::Shape {
            path: src.describe(),
            tensor: name.into(),
            expected: shape.to_vec(),
            found: t.shape,
        });
    }
    if let Some((i, v)) = t.values.first_non_finite() {
        return Err(LlamaError::Tensor {
            path: src.describe(),
            tensor: name.into(),
            problem: format!("non-finite value {v} at flat index {i}"),
        });
    }
    Ok(t.values)
}

fn upload<const D: usize>(values: HostFloats, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.into_f32(), shape), device)
}

fn norm(
    src: &dyn WeightSource,
    name: &str,
    c: &LlamaConfig,
    device: &Device,
) -> Result<RmsNorm, LlamaError> {
    norm_of_width(src, name, c.hidden_size, c, device)
}

fn norm_of_width(
    src: &dyn WeightSource,
    name: &str,
    width: usize,
    c: &LlamaConfig,
    device: &Device,
) -> Result<RmsNorm, LlamaError> {
    let w = float(src, name, &[width])?;
    Ok(RmsNorm::new(upload(w, [width], device), c.rms_norm_eps)
        .with_unit_offset(c.norm_unit_offset))
}

/// One linear at `path` (`[out, in]` in the file), as the applier says.
fn linear(
    src: &dyn WeightSource,
    applier: &LoraApplier,
    path: &str,
    [out, inp]: [usize; 2],
    has_bias: bool,
) -> Result<AdaptedLinear, LlamaError> {
    let device = applier.device();
    let wname = format!("{path}.weight");
    let bias = if has_bias {
        let b = float(src, &format!("{path}.bias"), &[out])?;
        Some(upload(b, [out], device))
    } else {
        None
    };
    let nf4_err = |source| LlamaError::Nf4 {
        path: src.describe(),
        source,
    };
    let quantized = match src.read_quantized(&wname)? {
        Some(q) => {
            if q.shape != [out, inp] {
                return Err(LlamaError::Shape {
                    path: src.describe(),
                    tensor: wname,
                    expected: vec![out, inp],
                    found: q.shape.clone(),
                });
            }
            Some(q)
        }
        None => None,
    };
    match (quantized, applier.quantize()) {
        (Some(q), Some(_)) => {
            let layer = QLoraLinear::from_quantized(&wname, &q, bias, device).map_err(nf4_err)?;
            Ok(applier.quantized_linear(path, layer)?)
        }
        (Some(q), None) => {
            let w = HostFloats::F32(q.dequantize_f32());
            float_linear(applier, path, w, [out, inp], bias)
        }
        // PiSSA reads and changes the float weight before it is quantized: the applier does it.
        (None, Some(_)) if applier.needs_float_weight(path, ModuleKind::Linear) => {
            let w = float(src, &wname, &[out, inp])?;
            float_linear(applier, path, w, [out, inp], bias)
        }
        (None, Some(config)) => {
            let w = float(src, &wname, &[out, inp])?;
            let shape = [out, inp];
            let q = match &w {
                HostFloats::F32(v) => QuantizedTensor::quantize(&wname, v, &shape, config),
                HostFloats::BF16(v) => QuantizedTensor::quantize(&wname, v, &shape, config),
                HostFloats::F16(v) => QuantizedTensor::quantize(&wname, v, &shape, config),
            }
            .map_err(nf4_err)?;
            drop(w);
            let layer = QLoraLinear::from_quantized(&wname, &q, bias, device).map_err(nf4_err)?;
            Ok(applier.quantized_linear(path, layer)?)
        }
        (None, None) => {
            let w = float(src, &wname, &[out, inp])?;
            float_linear(applier, path, w, [out, inp], bias)
        }
    }
}

fn float_linear(
    applier: &LoraApplier,
    path: &str,
    w: HostFloats,
    [out, inp]: [usize; 2],
    bias: Option<Tensor<1>>,
) -> Result<AdaptedLinear, LlamaError> {
    let device = applier.device();
    // Burn's Linear stores [in, out].
    let weight = upload(w, [out, inp], device).transpose();
    let base = Linear {
        weight: Param::from_tensor(weight),
        bias: bias.map(Param::from_tensor),
    };
    Ok(applier.linear(path, base, ModuleKind::Linear)?)
}

impl LlamaForCausalLM {
    /// Builds the model described by `config` from `src`, each block linear made by `applier`
    /// (frozen float, LoRA, or NF4 / QLoRA).
    pub fn from_source(
        config: &LlamaConfig,
        src: &dyn WeightSource,
        applier: &LoraApplier,
    ) -> Result<Self, LlamaError> {
        let c = config;
        let device = applier.device();
        let (h, v) = (c.hidden_size, c.vocab_size);
        let embed = float(src, "model.embed_tokens.weight", &[v, h])?;
        let embed_tokens = Embedding {
            weight: Param::from_tensor(upload(embed, [v, h], device)).set_require_grad(false),
        };
        let q_out = c.num_attention_heads * c.head_dim;
        let kv_out = c.num_key_value_heads * c.head_dim;
        // No `with_capacity` from the config: an absurd layer count must end in a missing-tensor
        // error, not an allocation failure.
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, dims: [usize; 2], bias: bool| {
                linear(src, applier, &format!("{p}.{name}"), dims, bias)
            };
            let (qkv_b, o_b) = (c.qkv_has_bias(), c.o_has_bias());
            let mb = c.mlp_bias;
            // Five separate projections, or Phi-3's two fused ones.
            let fused = c.fused_projections;
            let either = |present: bool, name: &str, dims: [usize; 2], bias: bool| {
                present.then(|| lin(name, dims, bias)).transpose()
            };
            let (ffn, hid) = (c.intermediate_size, h);
            let head_norm = |name: &str| {
                c.qk_norm
                    .then(|| {
                        let name = format!("{p}.self_attn.{name}.weight");
                        norm_of_width(src, &name, c.head_dim, c, device)
                    })
                    .transpose()
            };
            let sandwich = |name: &str| {
                c.sandwich_norms
                    .then(|| norm(src, &format!("{p}.{name}.weight"), c, device))
                    .transpose()
            };
            layers.push(LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: either(!fused, "self_attn.q_proj", [q_out, hid], qkv_b)?,
                    k_proj: either(!fused, "self_attn.k_proj", [kv_out, hid], qkv_b)?,
                    v_proj: either(!fused, "self_attn.v_proj", [kv_out, hid], qkv_b)?,
                    qkv_proj: either(
                        fused,
                        "self_attn.qkv_proj",
                        [q_out + 2 * kv_out, hid],
                        qkv_b,
                    )?,
                    o_proj: lin("self_attn.o_proj", [hid, q_out], o_b)?,
                    q_norm: head_norm("q_norm")?,
                    k_norm: head_norm("k_norm")?,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                    sliding_window: c.layer_window(i),
                    scale: c.attention_scale(),
                },
                mlp: LlamaMlp {
                    gate_proj: either(!fused, "mlp.gate_proj", [ffn, hid], mb)?,
                    up_proj: either(!fused, "mlp.up_proj", [ffn, hid], mb)?,
                    gate_up_proj: either(fused, "mlp.gate_up_proj", [2 * ffn, hid], mb)?,
                    down_proj: lin("mlp.down_proj", [hid, ffn], mb)?,
                    act: c.hidden_act,
                },
                input_layernorm: norm(src, &format!("{p}.input_layernorm.weight"), c, device)?,
                post_attention_layernorm: norm(
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    c,
                    device,
                )?,
                pre_feedforward_layernorm: sandwich("pre_feedforward_layernorm")?,
                post_feedforward_layernorm: sandwich("post_feedforward_layernorm")?,
            });
        }
        let model = LlamaModel {
            embed_tokens,
            layers,
            norm: norm(src, "model.norm.weight", c, device)?,
        };
        let save_head = applier.is_module_to_save("lm_head");
        let save_embed = applier.is_module_to_save("model.embed_tokens");
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            let w = float(src, "lm_head.weight", &[v, h])?;
            Some(upload(w, [v, h], device))
        };
        let mut model = Self::from_parts(c.clone(), model, lm_head);
        model.multimodal = src.is_multimodal();
        let ensure_tied = applier.config().is_some_and(|c| c.ensure_weight_tying);
        if model.lm_head.is_none() && (save_head || save_embed) && !ensure_tied {
            // PEFT trains a copy of the tied table `modules_to_save` names; the other side
            // keeps the base's weights: the head is untied.
            model.untie_head();
        }
        let tied = model.lm_head.is_none();
        if save_embed || (tied && save_head) {
            model.model.embed_tokens.weight =
                model.model.embed_tokens.weight.set_require_grad(true);
        }
        if save_head && let Some(w) = model.lm_head.take() {
            model.lm_head = Some(w.set_require_grad(true));
        }
        if let Some(config) = applier.config() {
            model.add_trainable_tokens(config, applier.adapter_name())?;
        }
        if let Some(config) = applier.config()
            && model
                .linears()
                .iter()
                .all(|(_, l)| l.adapters().is_none_or(|a| a.names().is_empty()))
        {
            // PEFT refuses such a config too ("Target modules ... not found in the base model").
            return Err(LlamaError::Lora(LoraError::Config {
                field: "target_modules".into(),
                problem: format!(
                    "{:?} matches no linear of this model (its linears are named like `{}`)",
                    config.target_modules,
                    c.layer_linears(0)
                        .into_iter()
                        .map(|(p, _, _)| p)
                        .collect::<Vec<_>>()
                        .join("`, `")
                ),
            }));
        }
        Ok(model)
    }

    /// Loads a HF model folder (float or bnb-4bit safetensors, single or sharded).
    pub fn load_hf(dir: impl AsRef<Path>, applier: &LoraApplier) -> Result<Self, LlamaError> {
        let ckpt = HfCheckpoint::open(dir)?;
        Self::from_source(&ckpt.config().clone(), &ckpt, applier)
    }

    /// Loads a GGUF file of llama.cpp's `llama`, `qwen2`, `qwen3`, `phi3` or `gemma3`
    /// architecture (its tensors dequantized, then kept float or quantized to NF4 as
    /// `applier` says).
    pub fn load_gguf(path: impl AsRef<Path>, applier: &LoraApplier) -> Result<Self, LlamaError> {
        let gguf = GgufModel::open(path)?;
        Self::from_source(&gguf.config().clone(), &gguf, applier)
    }

    /// Loads `path`: a `.gguf` file, or a HF folder (float or bnb-4bit).
    pub fn load(path: impl AsRef<Path>, applier: &LoraApplier) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            Self::load_gguf(path, applier)
        } else if path.is_dir() {
            Self::load_hf(path, applier)
        } else {
            Err(LlamaError::format(
                path,
                "not a model: expected a HF folder (config.json + safetensors) or a .gguf file",
            ))
        }
    }
}

impl LlamaConfig {
    /// The config of the model at `path` (a HF folder's `config.json`, or a `.gguf` file's
    /// metadata) without reading its weights: what a command checks its options against before
    /// any work.
    pub fn of_model(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            Ok(GgufModel::open(path)?.config().clone())
        } else if path.is_dir() {
            Self::load(path.join("config.json"))
        } else {
            Err(LlamaError::format(
                path,
                "not a model: expected a HF folder (config.json + safetensors) or a .gguf file",
            ))
        }
    }
}
