//! [`QuantizedTensor`]: one weight in 4-bit form, with plain or double-quantized absmax.

use std::borrow::Cow;
use std::ops::Range;

use crate::{
    AbsmaxRounding, Blocksize, DoubleQuantAbsmax, FloatDtype, FloatElement, Nf4Error, QuantType,
    dequantize_4bit_into, quantize_4bit, unpack_nibbles,
};

/// How to quantize: table, blocksize and whether to double-quantize the absmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantConfig {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block.
    pub blocksize: Blocksize,
    /// Quantize the absmax to 8 bits (bnb `compress_statistics` / `bnb_4bit_use_double_quant`).
    pub double_quant: bool,
    /// How double quantization picks the absmax's 8-bit codes: exactly nearest (bnb on CUDA,
    /// the default) or as bnb's CPU build does.
    pub absmax_rounding: AbsmaxRounding,
}

impl QuantConfig {
    /// The QLoRA recipe: NF4, blocksize 64, double quantization.
    pub fn qlora() -> Self {
        Self {
            quant_type: QuantType::Nf4,
            blocksize: Blocksize::DEFAULT,
            double_quant: true,
            absmax_rounding: AbsmaxRounding::Nearest,
        }
    }

    /// The config with the absmax codes picked as `rounding` says.
    pub fn with_absmax_rounding(mut self, rounding: AbsmaxRounding) -> Self {
        self.absmax_rounding = rounding;
        self
    }
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self::qlora()
    }
}

/// The block scales of a quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block.
    F32(Vec<f32>),
    /// 8-bit codes plus nested scales and offset.
    Double(DoubleQuantAbsmax),
}

impl Absmax {
    /// Number of 4-bit blocks described.
    pub fn len(&self) -> usize {
        match self {
            Absmax::F32(v) => v.len(),
            Absmax::Double(d) => d.codes.len(),
        }
    }

    /// True if there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 scale of every block (reconstructed when double-quantized).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Absmax::F32(v) => Cow::Borrowed(v),
            Absmax::Double(d) => Cow::Owned(d.reconstruct()),
        }
    }
}

/// A tensor quantized to 4 bits block-wise, laid out exactly as bitsandbytes stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    /// Logical shape of the original tensor (PyTorch layout, e.g. `[out, in]` for a linear).
    pub shape: Vec<usize>,
    /// Dtype of the original tensor (dequantize's default output).
    pub dtype: FloatDtype,
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block.
    pub blocksize: Blocksize,
    /// Packed nibbles, high nibble first, `ceil(n / 2)` bytes.
    pub packed: Vec<u8>,
    /// Block scales.
    pub absmax: Absmax,
}

impl QuantizedTensor {
    /// Quantizes `values` (row-major, of `shape`) with `config`. `name` is used in errors.
    pub fn quantize<T: FloatElement>(
        name: &str,
        values: &[T],
        shape: &[usize],
        config: QuantConfig,
    ) -> Result<Self, Nf4Error> {
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        if expected != values.len() {
            return Err(Nf4Error::ShapeMismatch {
                tensor: name.to_string(),
                shape: shape.to_vec(),
                expected,
                len: values.len(),
            });
        }
        if expected == 0 {
            return Err(Nf4Error::Empty {
                tensor: name.to_string(),
                shape: shape.to_vec(),
            });
        }
        let (packed, absmax) = quantize_4bit(values, config.quant_type, config.blocksize, name)?;
        let absmax = if config.double_quant {
            Absmax::Double(DoubleQuantAbsmax::quantize_with(
                &absmax,
                config.absmax_rounding,
                name,
            )?)
        } else {
            Absmax::F32(absmax)
        };
        Ok(Self {
            shape: shape.to_vec(),
            dtype: T::DTYPE,
            quant_type: config.quant_type,
            blocksize: config.blocksize,
            packed,
            absmax,
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocksize.blocks(self.numel())
    }

    /// Rows of the 2-D view `[shape[0], numel / shape[0]]`; a 1-D tensor is one row.
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[0]
        } else {
            1
        }
    }

    /// Columns of the 2-D view.
    pub fn cols(&self) -> usize {
        self.numel() / self.rows().max(1)
    }

    /// The unpacked 4-bit codes, one per element.
    pub fn codes(&self) -> Vec<u8> {
        unpack_nibbles(&self.packed, self.numel())
    }

    /// Storage in bytes (packed codes + scales), the figure behind "4.127 bits per parameter".
    pub fn storage_bytes(&self) -> usize {
        self.packed.len()
            + match &self.absmax {
                Absmax::F32(v) => 4 * v.len(),
                Absmax::Double(d) => d.codes.len() + 4 * d.nested_absmax.len() + 4,
            }
    }

    /// Dequantizes the whole tensor to `T` (compute in f32, then round to nearest even).
    pub fn dequantize<T: FloatElement>(&self) -> Vec<T> {
        let mut out = vec![T::default(); self.numel()];
        self.dequantize_range_into(0, &mut out, &self.absmax.to_f32());
        out
    }

    /// Dequantizes to f32.
    pub fn dequantize_f32(&self) -> Vec<f32> {
        self.dequantize()
    }

    /// Dequantizes the rows `rows` of the 2-D view `[rows(), cols()]`, row-major.
    pub fn dequantize_rows<T: FloatElement>(&self, rows: Range<usize>) -> Result<Vec<T>, Nf4Error> {
        let mut out = vec![T::default(); rows.len() * self.cols()];
        self.dequantize_rows_into(rows, &mut out, &self.absmax.to_f32())?;
        Ok(out)
    }

    /// Like [`Self::dequantize_rows`], into a caller buffer of `rows.len() * cols()` elements,
    /// with the f32 absmax given (from [`Absmax::to_f32`], computed once for many tiles).
    ///
    /// # Panics
    /// If `out` or `absmax` have the wrong length.
    pub fn dequantize_rows_into<T: FloatElement>(
        &self,
        rows: Range<usize>,
        out: &mut [T],
        absmax: &[f32],
    ) -> Result<(), Nf4Error> {
        if rows.start > rows.end || rows.end > self.rows() {
            return Err(Nf4Error::BadRowRange {
                tensor: String::from("<quantized tensor>"),
                start: rows.start,
                end: rows.end,
                rows: self.rows(),
            });
        }
        let cols = self.cols();
        assert_eq!(
            out.len(),
            rows.len() * cols,
            "dequantize_rows_into: output length"
        );
        self.dequantize_range_into(rows.start * cols, out, absmax);
        Ok(())
    }

    fn dequantize_range_into<T: FloatElement>(&self, start: usize, out: &mut [T], absmax: &[f32]) {
        assert_eq!(absmax.len(), self.num_blocks(), "absmax length");
        dequantize_4bit_into(
            &self.packed,
            absmax,
            self.quant_type.dequant_table(),
            self.blocksize.get(),
            start,
            out,
        );
    }
}
