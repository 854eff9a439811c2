//! The one error type of the crate.

use thiserror::Error;

/// Everything that can be wrong with a tensor to quantize or with bnb-4bit checkpoint tensors.
///
/// Each variant names the tensor it is about (`tensor`), so that a loader can pass the error on
/// as it is and the user learns which weight of which file is at fault.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Nf4Error {
    /// A weight holds NaN or ±Inf. bitsandbytes defines nothing for these (a NaN poisons every
    /// absmax through the double-quant mean), so they are refused.
    #[error("tensor `{tensor}`: non-finite value {value} at flat index {index}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// A tensor with no elements cannot be quantized.
    #[error("tensor `{tensor}`: empty tensor (shape {shape:?}) cannot be quantized")]
    Empty {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Blocksize outside 32…4096 or not a power of two.
    #[error(
        "tensor `{tensor}`: blocksize {blocksize} is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096"
    )]
    BadBlocksize {
        /// Tensor name.
        tensor: String,
        /// The blocksize asked for.
        blocksize: usize,
    },
    /// The number of values does not match the product of the shape.
    #[error("tensor `{tensor}`: {len} values do not fill shape {shape:?} ({expected} elements)")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// The shape given.
        shape: Vec<usize>,
        /// The product of the shape.
        expected: usize,
        /// Number of values given.
        len: usize,
    },
    /// A quant type name that is neither `nf4` nor `fp4`.
    #[error("tensor `{tensor}`: unknown quant type `{name}` (expected `nf4` or `fp4`)")]
    UnknownQuantType {
        /// Tensor name.
        tensor: String,
        /// The name found.
        name: String,
    },
    /// A dtype name or safetensors dtype that is not supported where it appears.
    #[error("tensor `{tensor}`: unsupported dtype {dtype}, expected {expected}")]
    BadDtype {
        /// Tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
        /// What was expected there.
        expected: String,
    },
    /// A checkpoint tensor that must be present is not.
    #[error("tensor `{tensor}`: missing companion tensor `{missing}`")]
    MissingTensor {
        /// The quantized weight's name.
        tensor: String,
        /// The full name of the tensor that is absent.
        missing: String,
    },
    /// A tensor has the wrong number of elements or the wrong shape.
    #[error("tensor `{tensor}`: {what}: expected {expected}, found {found}")]
    BadLength {
        /// Tensor name (the companion tensor at fault).
        tensor: String,
        /// What is being counted.
        what: String,
        /// Expected count or shape.
        expected: String,
        /// Found count or shape.
        found: String,
    },
    /// The `quant_state` JSON does not parse, lacks a key, or has an unknown one.
    #[error("tensor `{tensor}`: bad quant_state JSON: {problem}")]
    BadQuantState {
        /// The quant_state tensor's name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// A row range outside the tensor.
    #[error("tensor `{tensor}`: rows {start}..{end} are outside 0..{rows}")]
    BadRowRange {
        /// Tensor name.
        tensor: String,
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Number of rows.
        rows: usize,
    },
}
