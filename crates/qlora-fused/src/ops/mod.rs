//! The op traits (one per family, default bodies composed of Burn backend ops) and the
//! `Tensor` functions that call them through `Dispatch`.

mod attention;
mod block;
mod cross_entropy;
mod dropout;
mod lora_linear;
mod recompute;

pub use attention::{
    CausalAttentionOps, causal_attention, causal_attention_segmented, causal_attention_windowed,
};
pub use block::{BlockOps, geglu_tanh, rms_norm, rope, swiglu};
pub(crate) use block::{GELU_BETA, GELU_KAPPA, last_dim};
pub use cross_entropy::{LinearCrossEntropyOps, linear_cross_entropy};
pub use dropout::{DropoutOps, seeded_dropout};
pub use lora_linear::{LoraFactors, LoraLinearOps, nf4_lora_linear};
pub(crate) use recompute::into_backend_float;
pub use recompute::{RecomputeBlock, Recomputed, recompute_in_backward};

pub(crate) use attention::dims as attention_dims;
pub(crate) use cross_entropy::dims2;
