//! Optimizer state for QLoRA training that does not have to live in device memory.
//!
//! [`Paged`] wraps any Burn [`Optimizer`](burn::optim::Optimizer) (AdamW, Adam, SGD, ...) and
//! keeps each parameter's state on a host device between steps, moving it to the parameter's
//! device only for its update, under a device-memory budget: the QLoRA paper's paged
//! optimizers (Dettmers et al. 2023, §3), which bitsandbytes builds on CUDA unified memory.
//!
//! Why a decorator of the optimizer: in Burn 0.22 the set of backends is closed and
//! `Tensor<D>` carries no backend parameter, so there is no tensor-level place to intercept
//! allocations the way CUDA unified memory does. The optimizer is the one owner of optimizer
//! state, and Burn's [`ModuleOptimizer`](burn::optim::ModuleOptimizer) moves each parameter's
//! state through [`Optimizer::to_device`](burn::optim::Optimizer::to_device) right before its
//! update, so wrapping the per-tensor optimizer sees every state exactly when bnb's prefetch
//! would.
//!
//! [`AdamW8bit`] stores AdamW's moments block-wise in 8 bits (bitsandbytes' `AdamW8bit`) and
//! composes with [`Paged`].
#![warn(missing_docs)]

mod adamw8bit;
mod paged;

pub use adamw8bit::{
    AdamW8bit, AdamW8bitConfig, AdamW8bitState, BlockwiseCodes, MIN_8BIT_ELEMENTS, STATE_BLOCKSIZE,
};
pub use paged::{PAGEABLE_MIN_ELEMENTS, Paged, PagedConfig, PagedState, PagingStats};
