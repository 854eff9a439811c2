//! Fused training ops for Burn 0.22 as backend extensions.
//!
//! A training step of a decoder spends its memory on three things that composed Burn ops keep
//! for the backward pass: the `[tokens, vocab]` logits of the head, the `[b, h, t, t]` scores of
//! every attention layer, and one buffer per element-wise op of each block. The ops here keep
//! none of them:
//!
//! - [`linear_cross_entropy`]: the head's matmul fused with the loss, chunk by chunk, the input
//!   gradient computed in the same pass (as Liger-Kernel and Unsloth do);
//! - [`causal_attention`]: its backward pass keeps `Q`, `K`, `V` only and recomputes the
//!   probabilities block by block (Dao et al. 2022, *FlashAttention*), in a sliding window
//!   where the model has one ([`causal_attention_windowed`]);
//! - [`rms_norm`], [`swiglu`], [`geglu_tanh`], [`rope`]: one pass forward and one backward each;
//! - [`nf4_lora_linear`]: the QLoRA linear (NF4 base plus one LoRA adapter) as one op, the
//!   adapter's product accumulated into the base GEMM's output and input gradient;
//! - [`recompute_in_backward`]: one node for a whole block whose backward pass runs the block
//!   again from its kept input (block-level gradient checkpointing; the module-level API is
//!   `qlora_nn::checkpoint`).
//!
//! Laid out as burn-vision is: [`ops`] holds the `#[backend_extension]` traits, whose default
//! bodies are composed of the backend's own ops (what CubeCL runs, fused by Fusion, for the
//! loss, dropout and the LoRA linear; attention and the block ops have CubeCL kernels); `host`
//! holds the slice kernels of the Flex implementations (no Burn types); `backends` implements
//! the traits for Flex, for Autodiff over any backend (one backward node per op, multi-output
//! backward ops returning tuples), and for CubeCL (feature `cube` and a runtime).
#![warn(missing_docs)]

mod backends;
mod host;
pub mod ops;

pub use ops::{
    BlockOps, CausalAttentionOps, DropoutOps, LinearCrossEntropyOps, LoraFactors, LoraLinearOps,
    RecomputeBlock, Recomputed, causal_attention, causal_attention_segmented,
    causal_attention_windowed, geglu_tanh, linear_cross_entropy, nf4_lora_linear,
    recompute_in_backward, rms_norm, rope, seeded_dropout, swiglu,
};
