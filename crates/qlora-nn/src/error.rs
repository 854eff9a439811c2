//! The error type of `qlora-nn`.

use thiserror::Error;

/// A bad LoRA configuration or adapter file. Each variant names the file or field at fault.
#[derive(Debug, Error)]
pub enum LoraError {
    /// The config file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config is not valid JSON or a field has the wrong type.
    #[error("{path}: not a valid adapter_config.json: {problem}")]
    Json {
        /// The file (or `<memory>`).
        path: String,
        /// What serde reported.
        problem: String,
    },
    /// A field name PEFT's `LoraConfig` does not have.
    #[error("{path}: unknown field `{field}` (not a PEFT LoraConfig field)")]
    UnknownField {
        /// The file.
        path: String,
        /// The field.
        field: String,
    },
    /// A PEFT field whose value asks for something burn-qlora does not do.
    #[error("{path}: `{field}` = {value} is not supported: {why}")]
    Unsupported {
        /// The file.
        path: String,
        /// The field.
        field: String,
        /// Its value, as JSON.
        value: String,
        /// What is missing.
        why: String,
    },
    /// An adapter whose shape does not fit the layer it is added to.
    #[error(
        "adapter `{adapter}`: shape [in {found_in}, out {found_out}] does not fit the layer's [in {expected_in}, out {expected_out}]"
    )]
    AdapterShape {
        /// The adapter name.
        adapter: String,
        /// The layer's input features.
        expected_in: usize,
        /// The layer's output features.
        expected_out: usize,
        /// The adapter's input features.
        found_in: usize,
        /// The adapter's output features.
        found_out: usize,
    },
    /// Quantizing a base weight failed (NaN/Inf, bad shape, ...).
    #[error(transparent)]
    Quantize(#[from] qlora_backend::Nf4Error),
    /// A config given in code or on the command line (not read from a file) has a value out of
    /// range or a pattern that does not compile.
    #[error("LoRA config: bad value for `{field}`: {problem}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// An adapter's module does not fit the model it is added to.
    #[error("{source_name}: module `{module}`: {problem}")]
    Adapter {
        /// The adapter folder, or `adapter` for one that was not read from a folder.
        source_name: String,
        /// The module path.
        module: String,
        /// What is wrong.
        problem: String,
    },
    /// A layer cannot take what it was given (its module path is added by the caller).
    #[error("{problem}")]
    Layer {
        /// What is wrong.
        problem: String,
    },
    /// A value out of range or a pattern that does not compile, in a file.
    #[error("{path}: bad value for `{field}`: {problem}")]
    BadValue {
        /// The file.
        path: String,
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
}
