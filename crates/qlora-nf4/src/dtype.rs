//! The float element types a weight comes in and goes out as.

use half::{bf16, f16};

/// A float dtype of bnb's `quant_state` (`dtype`): the dtype of the original weight, which is
/// also the dtype `dequantize_4bit` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FloatDtype {
    /// IEEE binary32.
    #[default]
    F32,
    /// bfloat16.
    BF16,
    /// IEEE binary16.
    F16,
}

impl FloatDtype {
    /// PyTorch's name without `torch.` (`"float32"`, `"bfloat16"`, `"float16"`), as bnb writes it.
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::BF16 => "bfloat16",
            FloatDtype::F16 => "float16",
        }
    }

    /// Parses PyTorch's name; `None` if it is not one of the three.
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(FloatDtype::F32),
            "bfloat16" => Some(FloatDtype::BF16),
            "float16" => Some(FloatDtype::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::BF16 | FloatDtype::F16 => 2,
        }
    }
}

/// An element type that can be quantized (converted exactly to f32) and produced by dequantize
/// (rounded from f32 to nearest-even).
pub trait FloatElement: Copy + Send + Sync + Default + 'static {
    /// The matching [`FloatDtype`].
    const DTYPE: FloatDtype;
    /// Exact widening to f32.
    fn to_f32(self) -> f32;
    /// Round-to-nearest-even narrowing from f32.
    fn from_f32(v: f32) -> Self;
}

impl FloatElement for f32 {
    const DTYPE: FloatDtype = FloatDtype::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl FloatElement for bf16 {
    const DTYPE: FloatDtype = FloatDtype::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl FloatElement for f16 {
    const DTYPE: FloatDtype = FloatDtype::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
