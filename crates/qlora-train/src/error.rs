//! The one error type of the crate.

use thiserror::Error;

/// What can go wrong with training data, a run's settings, or its checkpoints.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line (or record) of a data file is malformed.
    #[error("{path}:{line}: {problem}")]
    Data {
        /// The data file.
        path: String,
        /// 1-based line number (record number for a JSON array).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A row of a Parquet or Arrow data file is malformed.
    #[error("{path}: row {row}{}: {problem}", group_text(*.row_group))]
    DataRow {
        /// The data file (inside the dataset folder where one was given).
        path: String,
        /// 1-based row of the file.
        row: usize,
        /// The row's row group and the file's count of them, 1-based (Parquet files).
        row_group: Option<(usize, usize)>,
        /// What is wrong, naming the field.
        problem: String,
    },
    /// The data as a whole cannot be used (empty, nothing to train on).
    #[error("{path}: {problem}")]
    Dataset {
        /// The data file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A setting is invalid.
    #[error("setting `{name}`: {problem}")]
    Setting {
        /// The setting.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A checkpoint cannot be resumed from.
    #[error("{path}: cannot resume: {problem}")]
    Resume {
        /// The checkpoint folder.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A training or evaluation step failed on the device (out of memory, a lost device, a
    /// kernel that could not run).
    #[error("training step {step} failed on the device: {message}")]
    Step {
        /// The step (1-based) that failed, or that was evaluated.
        step: usize,
        /// The device runtime's message.
        message: String,
        /// Whether the message says that memory ran out.
        out_of_memory: bool,
    },
    /// Evaluating the held-out samples failed on the device.
    #[error("evaluation after step {step} failed on the device: {message}")]
    Eval {
        /// The optimizer steps done when it was evaluated (0: before training).
        step: usize,
        /// The device runtime's message.
        message: String,
        /// Whether the message says that memory ran out.
        out_of_memory: bool,
    },
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] qlora_tokenizer::TokenizerError),
    /// An adapter failed.
    #[error(transparent)]
    Lora(#[from] qlora_nn::LoraError),
}

/// `" (row group 2 of 3)"`, or nothing.
fn group_text(group: Option<(usize, usize)>) -> String {
    group.map_or(String::new(), |(g, n)| format!(" (row group {g} of {n})"))
}

impl TrainError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
