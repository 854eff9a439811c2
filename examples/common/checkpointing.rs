//! `--grad-checkpointing none|block|offload` (`finetune`, `train_step`): the values, what the
//! run prints about them, and what the out-of-memory advice says given them.

use burn_qlora::nn::GradientCheckpointing;

/// `--grad-checkpointing`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpointing {
    None,
    Block,
    Offload,
}

impl From<Checkpointing> for GradientCheckpointing {
    fn from(c: Checkpointing) -> Self {
        match c {
            Checkpointing::None => GradientCheckpointing::Off,
            Checkpointing::Block => GradientCheckpointing::Block,
            Checkpointing::Offload => GradientCheckpointing::Offload,
        }
    }
}

/// The mode as the run prints it.
pub fn describe(mode: GradientCheckpointing) -> &'static str {
    match mode {
        GradientCheckpointing::Off => "off",
        GradientCheckpointing::Block => {
            "block (each decoder layer keeps its input and is recomputed in the backward pass)"
        }
        GradientCheckpointing::Offload => {
            "offload (each decoder layer's input in host memory, the layer recomputed in the \
             backward pass)"
        }
    }
}

/// What to change when a step runs out of memory: gradient checkpointing first where the run
/// does not use it (it frees the most, at one more forward pass), then the batch, then the
/// optimizer state. `on_host`: the model trains in host memory (Flex), where offloading the
/// layers' inputs changes nothing.
pub fn memory_advice(mode: Checkpointing, on_host: bool) -> String {
    let checkpointing = match mode {
        Checkpointing::None => {
            "use --grad-checkpointing block (each decoder layer recomputed in the backward \
             pass instead of its activations kept), "
        }
        Checkpointing::Block if !on_host => {
            "use --grad-checkpointing offload (the layers' inputs in host memory), "
        }
        _ => "",
    };
    format!(
        "to use less memory, {checkpointing}lower --batch-size (and raise --grad-accum to keep \
         the effective batch) or --seq-len, or use --optimizer paged-adamw with a \
         --paged-budget; then rerun with --resume"
    )
}
