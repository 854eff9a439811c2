//! # burn-qlora
//!
//! QLoRA fine-tuning for the [Burn](https://burn.dev) deep-learning framework: 4-bit NormalFloat
//! weights with double quantization, bit-exact with bitsandbytes, behind Burn's backend
//! extension mechanism.
//!
//! This facade re-exports the workspace crates:
//! - [`nf4`] (`qlora-nf4`): the NF4/FP4 format in pure Rust, bnb-4bit checkpoint tensors;
//! - [`backend`] (`qlora-backend`): the NF4 weight as a Burn extension type with `nf4_*` ops;
//! - [`cpu_gemm`] (`qlora-cpu-gemm`): the bf16 GEMM on the CPU's AMX / AVX512-BF16, chosen
//!   per machine, and the process-wide compute tier of the host kernels;
//! - [`fused`] (`qlora-fused`): fused training ops (attention, linear + cross-entropy,
//!   RMSNorm/SwiGLU/RoPE) with backward passes that keep no scores, logits or temporaries;
//! - [`nn`] (`qlora-nn`): PEFT's `LoraConfig`, LoRA/QLoRA layers, PEFT adapter files;
//! - [`tokenizer`] (`qlora-tokenizer`): tokenizers (`tokenizer.json`, GGUF vocabularies) and
//!   chat templates;
//! - [`llama`] (`qlora-llama`): LLaMA-family models, HF / bnb-4bit / GGUF loading, tokenizer,
//!   generation;
//! - [`optim`] (`qlora-optim`): paged optimizer state for any Burn optimizer, 8-bit AdamW;
//! - [`train`] (`qlora-train`): datasets, the training loop, checkpoints.
#![warn(missing_docs)]

pub use qlora_backend as backend;
pub use qlora_cpu_gemm as cpu_gemm;
pub use qlora_fused as fused;
pub use qlora_llama as llama;
pub use qlora_nf4 as nf4;
pub use qlora_nn as nn;
pub use qlora_optim as optim;
pub use qlora_tokenizer as tokenizer;
pub use qlora_train as train;
