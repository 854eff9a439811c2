//! Training for burn-qlora: datasets in the forms people use (chat, alpaca, plain text) with
//! the loss on responses only, the QLoRA training loop (Dettmers et al. 2023) with gradient
//! accumulation, clipping, schedules and paged or 8-bit optimizers, and checkpoints that resume
//! exactly. The loop trains any [`qlora_nn::CausalLm`]; [`Trainer::fit`] runs a whole run.
#![warn(missing_docs)]

mod batch;
mod checkpoint;
mod collective;
#[cfg(feature = "mpi")]
mod collective_mpi;
mod data;
mod distributed;
mod error;
mod fit;
mod metrics;
mod order;
mod parallel;
mod schedule;
mod trainer;

pub use batch::{batch_loss, collate, held_out_loss};
pub use checkpoint::find_checkpoint;
pub use collective::{Collective, SingleProcess};
#[cfg(feature = "mpi")]
pub use collective_mpi::MpiCollective;
pub use data::{
    DataFormat, DataOptions, FORM_FIELDS, LoadReport, Overflow, Sample, load_dataset, pack,
    stream_dataset,
};
pub use error::TrainError;
pub use fit::{FitEvent, FitOptions, FitSummary, steps_for_epochs};
pub use metrics::{plot_losses, write_metrics};
pub use order::{DataPosition, permutation, split, splitmix};
pub use parallel::{Replicas, Transfer};
pub use schedule::Schedule;
pub use trainer::{OptimizerKind, StepRecord, TrainConfig, TrainState, Trainer};
