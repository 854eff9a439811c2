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

/// The message for a training step that failed on the device (out of memory, a lost device):
/// what happened, which checkpoint in `out` is intact, and what to change (the memory advice
/// only when memory ran out; rerun under `mpirun` for a job of several processes). Other
/// errors pass through.
pub fn step_failed(
    out: &std::path::Path,
    mode: Checkpointing,
    on_host: bool,
    mpi: bool,
    error: burn_qlora::train::TrainError,
) -> Box<dyn std::error::Error> {
    use burn_qlora::train::{TrainError, find_checkpoint};
    let (TrainError::Step { out_of_memory, .. } | TrainError::Eval { out_of_memory, .. }) = &error
    else {
        return error.into();
    };
    let kept = match find_checkpoint(out) {
        Some(dir) => format!("the last checkpoint, {}, is intact", dir.display()),
        None => "no checkpoint had been written yet".to_string(),
    };
    let advice = if *out_of_memory {
        memory_advice(mode, on_host)
    } else {
        "once the device works again, rerun with --resume".to_string()
    };
    let advice = if mpi {
        format!("{advice} (under mpirun, as before)")
    } else {
        advice
    };
    format!("{error}\n{kept}; {advice}").into()
}
