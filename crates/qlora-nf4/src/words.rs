//! [`Nf4Layout`]: the constants of one NF4 weight, and the word layout of its two int tensors.
//!
//! A format fact, so it lives with the format: `qlora-backend` stores an NF4 weight as two
//! `U32` int tensors (every runtime stores `u32`; WGSL has no `u8`), so that it holds no float
//! parameter at all (nothing to freeze, nothing for autodiff to track, bit-exact in records),
//! and the CubeCL kernels read these words.
//!
//! - `packed`: bnb's packed bytes, four per word, little-endian (byte `4i + j` is bits
//!   `8j..8j+8` of word `i`); within a byte the first element is the high nibble.
//! - `scales`, without double quantization: `absmax[b]` as f32 bits, one word per block.
//! - `scales`, with double quantization:
//!   `[offset][nested_map; 256][nested_absmax; nested_blocks][codes, four per word]`, f32 bits
//!   for the floats, the 8-bit absmax codes packed like `packed`.

use crate::{
    Absmax, Blocksize, DoubleQuantAbsmax, FloatDtype, Nf4Error, QuantType, QuantizedTensor,
};

#[cfg(target_endian = "big")]
compile_error!("the NF4 word layout stores packed bytes in little-endian u32 words");

/// Shape and quantization constants of an NF4 weight of PyTorch layout `[rows, cols]`
/// (`[out_features, in_features]` for a linear layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nf4Layout {
    /// Output features (rows of `W`).
    pub rows: usize,
    /// Input features (columns of `W`).
    pub cols: usize,
    /// Elements per absmax block (of the row-major flattened weight).
    pub blocksize: usize,
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Codes per nested scale when the absmax is double-quantized, else `None`.
    pub nested_blocksize: Option<usize>,
    /// Dtype of the original weight (bnb's `quant_state.dtype`).
    pub dtype: FloatDtype,
}

/// Words of the `scales` tensor before the nested map, with double quantization.
const DQ_OFFSET_WORDS: usize = 1;
/// Entries of the 8-bit map.
const MAP_LEN: usize = 256;

impl Nf4Layout {
    /// The quantization settings this weight was made with (to quantize a changed weight the
    /// same way).
    pub fn config(&self) -> crate::QuantConfig {
        crate::QuantConfig {
            quant_type: self.quant_type,
            blocksize: Blocksize::new(self.blocksize, "<layout>")
                .expect("a layout holds a valid blocksize"),
            double_quant: self.nested_blocksize.is_some(),
            absmax_rounding: Default::default(),
        }
    }

    /// Number of weight elements.
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Number of absmax blocks.
    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Number of nested scales (0 without double quantization).
    pub fn nested_blocks(&self) -> usize {
        self.nested_blocksize
            .map_or(0, |nb| self.blocks().div_ceil(nb))
    }

    /// Length of the `packed` tensor in words.
    pub fn packed_words(&self) -> usize {
        self.numel().div_ceil(2).div_ceil(4)
    }

    /// Word index in `scales` where the nested absmax starts (double quantization).
    pub fn nested_absmax_start(&self) -> usize {
        DQ_OFFSET_WORDS + MAP_LEN
    }

    /// Word index in `scales` where the packed 8-bit codes start (double quantization).
    pub fn codes_start(&self) -> usize {
        self.nested_absmax_start() + self.nested_blocks()
    }

    /// Length of the `scales` tensor in words.
    pub fn scales_words(&self) -> usize {
        match self.nested_blocksize {
            None => self.blocks(),
            Some(_) => self.codes_start() + self.blocks().div_ceil(4),
        }
    }

    /// The layout of a 2-D quantized tensor. Errors (naming `name`) if it is not 2-D.
    pub fn of(q: &QuantizedTensor, name: &str) -> Result<Self, Nf4Error> {
        let [rows, cols] = q.shape[..] else {
            return Err(Nf4Error::BadLength {
                tensor: name.to_string(),
                what: "dimensions of a linear weight".into(),
                expected: "2 ([out, in])".into(),
                found: format!("{} ({:?})", q.shape.len(), q.shape),
            });
        };
        Ok(Self {
            rows,
            cols,
            blocksize: q.blocksize.get(),
            quant_type: q.quant_type,
            nested_blocksize: match &q.absmax {
                Absmax::F32(_) => None,
                Absmax::Double(d) => Some(d.nested_blocksize.get()),
            },
            dtype: q.dtype,
        })
    }

    /// The f32 absmax of every block, decoded from `scales` words.
    ///
    /// # Panics
    /// If `scales` does not have [`Self::scales_words`] words.
    pub fn decode_absmax(&self, scales: &[u32]) -> Vec<f32> {
        assert_eq!(
            scales.len(),
            self.scales_words(),
            "NF4 scales tensor length"
        );
        match self.nested_blocksize {
            None => scales.iter().map(|&w| f32::from_bits(w)).collect(),
            Some(nb) => {
                let offset = f32::from_bits(scales[0]);
                let map: [f32; 256] =
                    core::array::from_fn(|i| f32::from_bits(scales[DQ_OFFSET_WORDS + i]));
                let nested: Vec<f32> = scales[self.nested_absmax_start()..self.codes_start()]
                    .iter()
                    .map(|&w| f32::from_bits(w))
                    .collect();
                let codes: &[u8] =
                    &bytemuck::cast_slice(&scales[self.codes_start()..])[..self.blocks()];
                crate::reconstruct_absmax(codes, &nested, offset, &map, nb)
            }
        }
    }
}

/// The two word tensors of a quantized weight: `(packed, scales)`.
pub fn encode_words(q: &QuantizedTensor, layout: &Nf4Layout) -> (Vec<u32>, Vec<u32>) {
    let mut packed = vec![0u32; layout.packed_words()];
    bytemuck::cast_slice_mut::<u32, u8>(&mut packed)[..q.packed.len()].copy_from_slice(&q.packed);
    let scales = match &q.absmax {
        Absmax::F32(a) => a.iter().map(|v| v.to_bits()).collect(),
        Absmax::Double(d) => {
            let mut s = Vec::with_capacity(layout.scales_words());
            s.push(d.offset.to_bits());
            s.extend(d.nested_map.iter().map(|v| v.to_bits()));
            s.extend(d.nested_absmax.iter().map(|v| v.to_bits()));
            let mut codes = vec![0u32; d.codes.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut codes)[..d.codes.len()]
                .copy_from_slice(&d.codes);
            s.extend(codes);
            s
        }
    };
    debug_assert_eq!(scales.len(), layout.scales_words());
    (packed, scales)
}

/// Rebuilds the [`QuantizedTensor`] from its word tensors (the inverse of [`encode_words`]).
///
/// # Panics
/// If the word counts do not match the layout.
pub fn decode_words(layout: &Nf4Layout, packed: &[u32], scales: &[u32]) -> QuantizedTensor {
    assert_eq!(
        packed.len(),
        layout.packed_words(),
        "NF4 packed tensor length"
    );
    assert_eq!(
        scales.len(),
        layout.scales_words(),
        "NF4 scales tensor length"
    );
    let bytes = bytemuck::cast_slice::<u32, u8>(packed)[..layout.numel().div_ceil(2)].to_vec();
    let bs = Blocksize::new(layout.blocksize, "nf4 weight")
        .expect("layout blocksize was validated on creation");
    let absmax = match layout.nested_blocksize {
        None => Absmax::F32(scales.iter().map(|&w| f32::from_bits(w)).collect()),
        Some(nb) => Absmax::Double(DoubleQuantAbsmax {
            codes: bytemuck::cast_slice::<u32, u8>(&scales[layout.codes_start()..])
                [..layout.blocks()]
                .to_vec(),
            nested_absmax: scales[layout.nested_absmax_start()..layout.codes_start()]
                .iter()
                .map(|&w| f32::from_bits(w))
                .collect(),
            offset: f32::from_bits(scales[0]),
            nested_map: Box::new(core::array::from_fn(|i| {
                f32::from_bits(scales[DQ_OFFSET_WORDS + i])
            })),
            nested_blocksize: Blocksize::new(nb, "nf4 weight").expect("validated on creation"),
        }),
    };
    QuantizedTensor {
        shape: vec![layout.rows, layout.cols],
        dtype: layout.dtype,
        quant_type: layout.quant_type,
        blocksize: bs,
        packed: bytes,
        absmax,
    }
}
