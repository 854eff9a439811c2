//! NF4/FP4 4-bit block quantization with double quantization, bit-exact with bitsandbytes
//! 0.50's CPU path (the double-quant codes: exact nearest, see [`DoubleQuantAbsmax`]; the README's
//! "What is bit-exact" lists each claim and its test), in pure Rust (no Burn). This is the reference every kernel of burn-qlora is tested
//! against, and the reader/writer of bnb-4bit checkpoint tensors.
//!
//! The numerics follow Dettmers et al., *QLoRA: Efficient Finetuning of Quantized LLMs* (2023):
//! weights are cut into blocks of 64 consecutive elements, each scaled by its absolute maximum
//! and mapped to the nearest of 16 NormalFloat levels; the per-block scales are then quantized
//! again to 8 bits ("double quantization"), for 4.127 bits per parameter.
//!
//! ```
//! use qlora_nf4::{QuantConfig, QuantizedTensor};
//! let w: Vec<f32> = (0..128).map(|i| (i as f32 * 0.1).sin()).collect();
//! let q = QuantizedTensor::quantize("w", &w, &[2, 64], QuantConfig::qlora()).unwrap();
//! let back: Vec<f32> = q.dequantize();
//! assert!(w.iter().zip(&back).all(|(a, b)| (a - b).abs() < 0.15));
//! ```
#![warn(missing_docs)]

mod blocksize;
mod bnb;
mod codebook;
mod dequantize;
mod double_quant;
mod dtype;
pub mod dynamic_map;
mod error;
mod pack;
mod python_float;
mod quant_state;
mod quantize;
mod raw;
mod simd;
mod tensor;
mod words;

pub use blocksize::Blocksize;
pub use bnb::{bnb_companion_suffixes, is_bnb_4bit, quant_state_key};
pub use codebook::{Encoder4, FP4_CODE, FP4_DEQUANT, NF4_CODE, QuantType};
pub use dequantize::{dequantize_4bit_into, dequantize_4bit_seq, pair_table};
pub use double_quant::{DoubleQuantAbsmax, mean_f32, reconstruct_absmax};
pub use dtype::{FloatDtype, FloatElement};
pub use dynamic_map::{AbsmaxRounding, dynamic_map_signed, dynamic_map_unsigned};
pub use error::Nf4Error;
pub use half::{bf16, f16};
pub use pack::{pack_nibbles, unpack_nibbles};
pub use python_float::python_repr;
pub use quant_state::{NestedJson, QuantStateJson};
pub use quantize::{MIN_ABSMAX, quantize_4bit};
pub use raw::{Dtype, RawTensor, TensorLookup};
pub use tensor::{Absmax, QuantConfig, QuantizedTensor};
pub use words::{Nf4Layout, decode_words, encode_words};
