//! LoRA and QLoRA for Burn, with PEFT's configuration and file format.
//!
//! LoRA (Hu et al. 2021) adds a trainable low-rank update to a frozen linear layer,
//! `y = W·x + (α/r)·B·A·dropout(x)`; QLoRA (Dettmers et al. 2023) keeps `W` in 4-bit NF4 with
//! double quantization and trains only `A` and `B`.
#![warn(missing_docs)]

mod adapter;
mod apply;
mod causal_lm;
mod checkpoint;
mod config;
mod config_json;
mod count;
pub mod dora;
mod error;
mod layer;
mod layer_config;
pub mod loftq;
mod matching;
mod model;
mod param_ids;
mod peft_fields;
mod peft_io;
pub mod pissa;
mod seed;
mod svd;
mod to_lora;
mod tokens;

pub use adapter::{LoraAdapter, LoraAdapters};
pub use apply::{AdaptedLinear, LoraApplier};
pub use causal_lm::{CausalLm, IGNORE_INDEX, PaddingFreeBatch};
pub use checkpoint::{GradientCheckpointing, checkpoint, checkpoint_with};
pub use config::{
    InitLoraWeights, LayerIndices, LayersPattern, LoraBias, LoraConfig, ModuleSelector,
    TrainableTokenIndices,
};
pub use count::ParameterCount;
pub use error::LoraError;
pub use layer::{LoraLinear, QLoraLinear};
pub use layer_config::{LoraLinearConfig, QLoraLinearConfig};
pub use matching::{LoraMatcher, ModuleKind};
pub use model::{LoraModel, put_into_tables};
pub use peft_io::{AdapterDtype, AdapterWeights, PEFT_PREFIX, PeftAdapter, write_atomic};
pub use seed::{dropout_seed, dropout_seed_rows, recomputing, with_dropout_row_offset};
pub use tokens::{TokenAdapters, TrainableTokens};
