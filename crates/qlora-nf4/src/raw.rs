//! [`RawTensor`]: a tensor as a safetensors file holds it (dtype, shape, little-endian bytes),
//! and [`TensorLookup`], anything that finds such tensors by name.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

pub use safetensors::Dtype;

/// A tensor as stored in a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes, row-major.
    pub data: Cow<'a, [u8]>,
}

impl RawTensor<'static> {
    /// An owned U8 tensor.
    pub fn u8(shape: Vec<usize>, data: Vec<u8>) -> Self {
        Self {
            dtype: Dtype::U8,
            shape,
            data: Cow::Owned(data),
        }
    }

    /// An owned F32 tensor.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape,
            data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }
}

impl RawTensor<'_> {
    /// Number of elements of the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values of an F32 tensor (`None` for another dtype or a byte length that does not
    /// match).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        (self.dtype == Dtype::F32 && self.data.len() == 4 * self.numel()).then(|| {
            self.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }
}

impl safetensors::View for RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl safetensors::View for &RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        safetensors::View::dtype(*self)
    }
    fn shape(&self) -> &[usize] {
        safetensors::View::shape(*self)
    }
    fn data(&self) -> Cow<'_, [u8]> {
        safetensors::View::data(*self)
    }
    fn data_len(&self) -> usize {
        safetensors::View::data_len(*self)
    }
}

/// Finds tensors by their full name.
pub trait TensorLookup {
    /// The tensor called `name`, if present.
    fn tensor(&self, name: &str) -> Option<RawTensor<'_>>;
}

impl TensorLookup for safetensors::SafeTensors<'_> {
    fn tensor(&self, name: &str) -> Option<RawTensor<'_>> {
        let view = safetensors::SafeTensors::tensor(self, name).ok()?;
        Some(RawTensor {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: Cow::Borrowed(view.data()),
        })
    }
}

impl<'a, S: std::hash::BuildHasher> TensorLookup for HashMap<String, RawTensor<'a>, S> {
    fn tensor(&self, name: &str) -> Option<RawTensor<'_>> {
        self.get(name).map(borrow)
    }
}

impl<'a> TensorLookup for BTreeMap<String, RawTensor<'a>> {
    fn tensor(&self, name: &str) -> Option<RawTensor<'_>> {
        self.get(name).map(borrow)
    }
}

fn borrow<'b>(t: &'b RawTensor<'_>) -> RawTensor<'b> {
    RawTensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        data: Cow::Borrowed(&t.data),
    }
}
