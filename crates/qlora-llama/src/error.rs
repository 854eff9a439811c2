//! The one error type of the crate.

use thiserror::Error;

/// Everything that can be wrong with a model folder, a checkpoint file, a config or a tokenizer.
///
/// Every variant names the file (`path`) and, where it applies, the tensor or field, so a user
/// learns which input is at fault and why.
#[derive(Debug, Error)]
pub enum LlamaError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A config field is missing, has the wrong type or an unsupported value.
    #[error("{path}: field `{field}`: {problem}")]
    Config {
        /// The config file.
        path: String,
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A checkpoint file is malformed (header, offsets, dtypes, lengths).
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The file (or folder) searched.
        path: String,
        /// The tensor name.
        tensor: String,
    },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: String,
        /// The tensor name.
        tensor: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A tensor holds a value that cannot be used (NaN/Inf, unsupported dtype).
    #[error("{path}: tensor `{tensor}`: {problem}")]
    Tensor {
        /// The file.
        path: String,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// 4-bit quantization or a bnb-4bit tensor failed (the error names the tensor).
    #[error("{path}: {source}")]
    Nf4 {
        /// The file.
        path: String,
        /// The quantization error.
        #[source]
        source: qlora_nf4::Nf4Error,
    },
    /// A LoRA config or adapter did not fit the model.
    #[error(transparent)]
    Lora(#[from] qlora_nn::LoraError),
    /// The tokenizer could not be read, built or used.
    #[error(transparent)]
    Tokenizer(#[from] qlora_tokenizer::TokenizerError),
    /// Fetching the default model failed.
    #[error("fetching {what}: {problem}")]
    Fetch {
        /// What was being fetched.
        what: String,
        /// What went wrong and how to proceed.
        problem: String,
    },
    /// A token id the model has no embedding for.
    #[error(
        "{what}: token id {id} is past the model's vocabulary of {vocab} (a tokenizer of another \
         model, or tokens added beyond vocab_size)"
    )]
    TokenId {
        /// Where the id came from (a data file, the prompt).
        what: String,
        /// The id.
        id: u32,
        /// The model's `vocab_size`.
        vocab: usize,
    },
}

impl LlamaError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub(crate) fn format(path: impl AsRef<std::path::Path>, problem: impl Into<String>) -> Self {
        Self::Format {
            path: path.as_ref().display().to_string(),
            problem: problem.into(),
        }
    }
}
