//! Kernels on host slices (no Burn types): what the Flex implementations run.

pub(crate) mod attention;
mod attention_bf16;
pub(crate) mod block;
pub(crate) mod cross_entropy;
#[cfg(test)]
mod cross_entropy_tests;
pub(crate) mod dropout;
pub(crate) mod lora_linear;
mod rank_r;
mod softmax_row;
mod wide;
