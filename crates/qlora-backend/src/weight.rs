//! [`Nf4Weight`]: a frozen NF4 weight as a Burn `Module`, and the `Tensor`-level `nf4_*` ops.

use burn::backend::Dispatch;
use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
use qlora_nf4::{Nf4Error, QuantConfig, QuantizedTensor, bf16, f16};

use crate::{Nf4Layout, Nf4Ops, Nf4Primitive, decode_words, encode_words};

/// A frozen 4-bit weight `W` of PyTorch layout `[out_features, in_features]`, bit-exact with
/// bitsandbytes (NF4 or FP4, optional double quantization).
///
/// Its two parameters are `U32` int tensors (see [`Nf4Layout`]), so the weight is never
/// trainable, autodiff never tracks it, and records save it bit for bit. The layout constants
/// are not saved: build the module with the same configuration before loading a record, as
/// with any Burn module.
#[derive(Module, Debug)]
pub struct Nf4Weight {
    /// Packed 4-bit codes, `U32` words.
    pub packed: Param<Tensor<1, Int>>,
    /// Block scales, `U32` words.
    pub scales: Param<Tensor<1, Int>>,
    /// `[out_features, in_features]` as two `U32` values: the weight's shape, saved with it
    /// (and the exact parameter count a module visitor can read).
    pub shape: Param<Tensor<1, Int>>,
    #[module(skip)]
    layout: Nf4Layout,
}

fn words_tensor(words: Vec<u32>, device: &Device) -> Tensor<1, Int> {
    let n = words.len();
    Tensor::from_data(
        TensorData::new(words, [n]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
    )
}

fn tensor_words(t: Tensor<1, Int>) -> Vec<u32> {
    let data = t.into_data();
    match data.dtype() {
        DType::U32 => data.try_to_vec::<u32>().expect("U32 data"),
        other => panic!("NF4 word tensor must be U32, found {other:?}"),
    }
}

impl Nf4Weight {
    /// Uploads a quantized tensor (for example one read from a bnb-4bit checkpoint with
    /// [`QuantizedTensor::from_bnb`]) to `device`. Errors if it is not 2-D; `name` is used in
    /// errors.
    pub fn from_quantized(
        q: &QuantizedTensor,
        name: &str,
        device: &Device,
    ) -> Result<Self, Nf4Error> {
        let layout = Nf4Layout::of(q, name)?;
        let (packed, scales) = encode_words(q, &layout);
        Ok(Self {
            packed: Param::initialized(ParamId::new(), words_tensor(packed, device)),
            scales: Param::initialized(ParamId::new(), words_tensor(scales, device)),
            shape: Param::initialized(
                ParamId::new(),
                words_tensor(vec![layout.rows as u32, layout.cols as u32], device),
            ),
            layout,
        })
    }

    /// Quantizes a float weight `[out, in]` (f32, bf16 or f16) and places the result on the
    /// weight's device. `name` is used in errors (NaN/Inf, empty tensor).
    ///
    /// A Burn `Linear` stores its weight as `[in, out]`: pass `linear.weight.val().transpose()`.
    pub fn quantize(name: &str, weight: Tensor<2>, config: QuantConfig) -> Result<Self, Nf4Error> {
        let device = weight.device();
        let shape = weight.dims();
        let data = weight.into_data();
        let q = match data.dtype() {
            DType::BF16 => QuantizedTensor::quantize(
                name,
                &data.try_to_vec::<bf16>().expect("bf16 data"),
                &shape,
                config,
            )?,
            DType::F16 => QuantizedTensor::quantize(
                name,
                &data.try_to_vec::<f16>().expect("f16 data"),
                &shape,
                config,
            )?,
            _ => QuantizedTensor::quantize(
                name,
                &data.convert::<f32>().try_to_vec::<f32>().expect("f32 data"),
                &shape,
                config,
            )?,
        };
        Self::from_quantized(&q, name, &device)
    }

    /// Reads the weight back into a [`QuantizedTensor`] (for example to write a bnb-4bit
    /// checkpoint with [`QuantizedTensor::to_bnb`]).
    pub fn to_quantized(&self) -> QuantizedTensor {
        decode_words(
            &self.layout,
            &tensor_words(self.packed.val()),
            &tensor_words(self.scales.val()),
        )
    }

    /// Shape and quantization constants.
    pub fn layout(&self) -> Nf4Layout {
        self.layout
    }

    /// The weight's shape as stored and as PyTorch gives it: `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.layout.rows, self.layout.cols]
    }

    /// The width of the input (the stored weight's columns).
    pub fn in_features(&self) -> usize {
        self.layout.cols
    }

    /// The width of the output (the stored weight's rows).
    pub fn out_features(&self) -> usize {
        self.layout.rows
    }

    /// The device holding the weight.
    pub fn device(&self) -> Device {
        self.packed.val().device()
    }

    /// The weight as the extension type the `nf4_*` ops take.
    pub fn primitive(&self) -> Nf4Primitive<Dispatch> {
        Nf4Primitive {
            packed: self.packed.val().into_dispatch(),
            scales: self.scales.val().into_dispatch(),
            layout: self.layout,
        }
    }
}

/// The dense weight `[out, in]` (a constant: no gradient flows into it).
pub fn nf4_dequantize(w: &Nf4Weight) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_dequantize(w.primitive()))
}

/// `y = x · Wᵀ`.
///
/// - `x`: `[..., in_features]`
/// - returns `[..., out_features]`
///
/// Differentiable in `x`; the backward keeps only the packed weight.
///
/// # Panics
/// If the last dimension of `x` is not `in_features`, or `x` lives on a backend without an
/// `Nf4Ops` implementation.
pub fn nf4_linear<const D: usize>(x: Tensor<D>, w: &Nf4Weight) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_linear(
        x.into_dispatch(),
        w.primitive(),
    ))
}

/// [`nf4_linear`] for a pass that reads only the output's gradient, never its values (the last
/// product of a checkpointed block's recomputation): zeros of the output's shape, with
/// `nf4_linear`'s backward (`dx = dy · W`); the product itself is not computed.
///
/// - `x`: `[..., in_features]`
/// - returns `[..., out_features]`, zeros
///
/// # Panics
/// If the last dimension of `x` is not `in_features`.
pub fn nf4_linear_output_unused<const D: usize>(x: Tensor<D>, w: &Nf4Weight) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_linear_output_unused(
        x.into_dispatch(),
        w.primitive(),
    ))
}

/// `dx = dy · W`: the input gradient of [`nf4_linear`].
///
/// - `dy`: `[..., out_features]`
/// - returns `[..., in_features]`
///
/// # Panics
/// If the last dimension of `dy` is not `out_features`.
pub fn nf4_linear_backward_input<const D: usize>(dy: Tensor<D>, w: &Nf4Weight) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Nf4Ops>::nf4_linear_backward_input(
        dy.into_dispatch(),
        w.primitive(),
    ))
}
