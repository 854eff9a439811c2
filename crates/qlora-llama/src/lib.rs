//! LLaMA-family causal language models for burn-qlora, written once for every Burn device.
//!
//! [`LlamaForCausalLM`] keeps HF's module names (`model.layers.N.self_attn.q_proj`, ...), so
//! `LoraConfig::target_modules` and PEFT adapter files address its linears directly. Every
//! linear of the decoder blocks is a [`qlora_nn::AdaptedLinear`]: a frozen float layer, LoRA
//! over a float base, or a 4-bit NF4 base (QLoRA, Dettmers et al. 2023) with or without
//! adapters. Weights load from HF safetensors (quantized to NF4 + double quantization while
//! loading, one tensor at a time) or bnb-4bit checkpoints (used as they are).
#![warn(missing_docs)]

mod adapters;
mod attention;
mod block;
mod cache;
mod checkpoint;
mod config;
mod config_gemma;
mod config_hf;
mod config_refuse;
mod error;
mod generate;
mod gguf;
mod gguf_export;
mod gguf_export_spm;
mod gguf_export_tokenizer;
mod gguf_lora;
mod gguf_model;
mod gguf_tokenizer;
mod gguf_write;
mod hub;
mod layer_types;
mod load;
mod loss;
mod mlp;
mod model;
mod norm;
mod random;
mod read_at;
mod rope;
mod rope_config;
mod safetensors_file;
mod save;
mod spm_model;

pub use attention::LlamaAttention;
pub use block::LlamaDecoderLayer;
pub use cache::KvCache;
pub use checkpoint::{HfCheckpoint, HostFloats, HostTensor, WeightSource};
pub use config::{HiddenAct, LlamaConfig, ModelType};
pub use error::LlamaError;
pub use generate::{GenerationConfig, Sampling};
pub use gguf::{GgmlType, GgufFile, GgufTensorInfo, GgufValue, dequantize as ggml_dequantize};
pub use gguf_lora::save_gguf_lora;
pub use gguf_model::{GgufModel, permute_rows, unpermute_rows};
pub use gguf_tokenizer::{TokenizerFiles, gguf_vocab};
pub use gguf_write::{GgufWriter, quantize_ggml};
pub use hub::{DEFAULT_MODEL_PACKAGE, cache_dir, default_model, default_model_path};
pub use layer_types::LayerType;
pub use loss::{IGNORE_INDEX, causal_lm_loss, causal_lm_loss_fused};
pub use mlp::LlamaMlp;
pub use model::{LlamaForCausalLM, LlamaModel};
// The PEFT operations of `LlamaForCausalLM` are `LoraModel`'s: re-exported so that one import
// brings them.
pub use norm::RmsNorm;
pub use qlora_nn::LoraModel;
pub use rope::Rope;
pub use rope_config::{RopeConfig, RopeScaling};
pub use safetensors_file::{SafetensorsFile, TensorInfo, dtype_size};
pub use save::SaveFormat;
// The tokenizer is `qlora-tokenizer`'s (no model family in it); re-exported under the names
// this crate always used, with `TokenizerFiles` for GGUF files and model paths.
pub use qlora_tokenizer::{
    CHATML_TEMPLATE, ChatMessage, ChatTemplate, GgufVocab, Tokenizer as LlamaTokenizer,
    TokenizerError,
};
