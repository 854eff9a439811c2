//! The one error type of the crate.

use thiserror::Error;

/// What can be wrong with a tokenizer's files, its vocabulary or its chat template. Every
/// variant names the file (`path`: the `tokenizer.json`, the config, the template file, or the
/// GGUF the vocabulary came from).
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer could not be built or used.
    #[error("{path}: tokenizer: {problem}")]
    Invalid {
        /// The tokenizer file (or the GGUF it came from).
        path: String,
        /// What is wrong.
        problem: String,
    },
}

impl TokenizerError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
