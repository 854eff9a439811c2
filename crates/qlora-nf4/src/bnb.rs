//! bnb-4bit checkpoint tensors of one quantized weight (transformers' `save_pretrained` of a
//! model loaded with `load_in_4bit`), read into a [`QuantizedTensor`] and written back.
//!
//! For a weight `<w>` (e.g. `model.layers.0.self_attn.q_proj.weight`):
//!
//! | key | dtype | content |
//! |---|---|---|
//! | `<w>` | U8 `[ceil(n/2), 1]` | packed nibbles, high first |
//! | `<w>.absmax` | U8 (nested) or F32 | per-block scales |
//! | `<w>.quant_map` | F32 `[16]` | the 4-bit table |
//! | `<w>.nested_absmax` | F32 | nested scales (nested only) |
//! | `<w>.nested_quant_map` | F32 `[256]` | the 8-bit map (nested only) |
//! | `<w>.quant_state.bitsandbytes__nf4` (or `__fp4`) | U8 | `quant_state` JSON |

use crate::{
    Absmax, Blocksize, DoubleQuantAbsmax, Dtype, NestedJson, Nf4Error, QuantStateJson, QuantType,
    QuantizedTensor, RawTensor, TensorLookup,
};

/// Key of the `quant_state` tensor of `weight` for `quant_type`.
pub fn quant_state_key(weight: &str, quant_type: QuantType) -> String {
    format!("{weight}.quant_state.bitsandbytes__{}", quant_type.as_str())
}

/// True if `weight` is stored 4-bit in `lookup` (its `quant_state` tensor is present).
pub fn is_bnb_4bit(lookup: &impl TensorLookup, weight: &str) -> bool {
    [QuantType::Nf4, QuantType::Fp4]
        .iter()
        .any(|&q| lookup.tensor(&quant_state_key(weight, q)).is_some())
}

/// All tensor names that belong to the 4-bit weight `weight`, besides `weight` itself.
pub fn bnb_companion_suffixes() -> [&'static str; 6] {
    [
        ".absmax",
        ".quant_map",
        ".nested_absmax",
        ".nested_quant_map",
        ".quant_state.bitsandbytes__nf4",
        ".quant_state.bitsandbytes__fp4",
    ]
}

impl QuantizedTensor {
    /// Reads the 4-bit weight `weight` and its companions from `lookup`, validating every
    /// length against the `quant_state` shape. No re-quantization: the bytes are kept as they are.
    pub fn from_bnb(lookup: &impl TensorLookup, weight: &str) -> Result<Self, Nf4Error> {
        let (qs_key, qs) = [QuantType::Nf4, QuantType::Fp4]
            .iter()
            .find_map(|&q| {
                let k = quant_state_key(weight, q);
                lookup.tensor(&k).map(|t| (k, t))
            })
            .ok_or_else(|| Nf4Error::MissingTensor {
                tensor: weight.to_string(),
                missing: quant_state_key(weight, QuantType::Nf4),
            })?;
        expect_dtype(&qs, Dtype::U8, &qs_key)?;
        let state = QuantStateJson::parse(&qs.data, &qs_key)?;
        if !qs_key.ends_with(state.quant_type.as_str()) {
            return Err(Nf4Error::BadQuantState {
                tensor: qs_key,
                problem: format!(
                    "`quant_type` is `{}`, the key says otherwise",
                    state.quant_type.as_str()
                ),
            });
        }
        let n = state
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Nf4Error::BadQuantState {
                tensor: qs_key.clone(),
                problem: format!(
                    "`shape` {:?} has more elements than this machine can address",
                    state.shape
                ),
            })?;
        if n == 0 {
            return Err(Nf4Error::Empty {
                tensor: weight.to_string(),
                shape: state.shape,
            });
        }
        let blocks = state.blocksize.blocks(n);

        let packed = need(lookup, weight, weight)?;
        expect_dtype(&packed, Dtype::U8, weight)?;
        expect_len(
            packed.data.len(),
            n.div_ceil(2),
            weight,
            "packed bytes for the quant_state shape",
        )?;

        let qmap_key = format!("{weight}.quant_map");
        let qmap = need(lookup, weight, &qmap_key)?;
        let code = f32_values(&qmap, &qmap_key)?;
        expect_len(code.len(), 16, &qmap_key, "quant_map entries")?;
        let table = state.quant_type.code_table();
        if code
            .iter()
            .zip(table)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(Nf4Error::BadLength {
                tensor: qmap_key,
                what: format!(
                    "quant_map values (bnb decodes {} with its fixed table)",
                    state.quant_type.as_str()
                ),
                expected: format!("{table:?}"),
                found: format!("{code:?}"),
            });
        }

        let absmax_key = format!("{weight}.absmax");
        let absmax_t = need(lookup, weight, &absmax_key)?;
        let absmax = match &state.nested {
            None => {
                let a = f32_values(&absmax_t, &absmax_key)?;
                expect_len(
                    a.len(),
                    blocks,
                    &absmax_key,
                    "absmax entries (one per block)",
                )?;
                Absmax::F32(a)
            }
            Some(nested) => Absmax::Double(read_nested(lookup, weight, &absmax_t, nested, blocks)?),
        };
        Ok(Self {
            shape: state.shape,
            dtype: state.dtype,
            quant_type: state.quant_type,
            blocksize: state.blocksize,
            packed: packed.data.into_owned(),
            absmax,
        })
    }

    /// The `quant_state` this tensor writes.
    pub fn quant_state(&self) -> QuantStateJson {
        QuantStateJson {
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            dtype: self.dtype,
            shape: self.shape.clone(),
            nested: match &self.absmax {
                Absmax::F32(_) => None,
                Absmax::Double(d) => Some(NestedJson {
                    blocksize: d.nested_blocksize,
                    dtype: crate::FloatDtype::F32,
                    offset: d.offset as f64,
                }),
            },
        }
    }

    /// The tensors bnb writes for this weight under the name `weight`, in bnb's layouts.
    pub fn to_bnb(&self, weight: &str) -> Vec<(String, RawTensor<'static>)> {
        let mut out = vec![(
            weight.to_string(),
            RawTensor::u8(vec![self.packed.len(), 1], self.packed.clone()),
        )];
        match &self.absmax {
            Absmax::F32(a) => {
                out.push((format!("{weight}.absmax"), RawTensor::f32(vec![a.len()], a)))
            }
            Absmax::Double(d) => {
                out.push((
                    format!("{weight}.absmax"),
                    RawTensor::u8(vec![d.codes.len()], d.codes.clone()),
                ));
                out.push((
                    format!("{weight}.nested_absmax"),
                    RawTensor::f32(vec![d.nested_absmax.len()], &d.nested_absmax),
                ));
                out.push((
                    format!("{weight}.nested_quant_map"),
                    RawTensor::f32(vec![256], &d.nested_map[..]),
                ));
            }
        }
        out.push((
            format!("{weight}.quant_map"),
            RawTensor::f32(vec![16], self.quant_type.code_table()),
        ));
        let json = self.quant_state().to_json().into_bytes();
        out.push((
            quant_state_key(weight, self.quant_type),
            RawTensor::u8(vec![json.len()], json),
        ));
        out
    }
}

fn read_nested(
    lookup: &impl TensorLookup,
    weight: &str,
    absmax_t: &RawTensor<'_>,
    nested: &NestedJson,
    blocks: usize,
) -> Result<DoubleQuantAbsmax, Nf4Error> {
    let absmax_key = format!("{weight}.absmax");
    expect_dtype(absmax_t, Dtype::U8, &absmax_key)?;
    expect_len(
        absmax_t.data.len(),
        blocks,
        &absmax_key,
        "absmax codes (one per block)",
    )?;
    if nested.dtype != crate::FloatDtype::F32 {
        return Err(Nf4Error::BadQuantState {
            tensor: weight.to_string(),
            problem: format!(
                "`nested_dtype` is `{}`, only float32 is used by bnb",
                nested.dtype.torch_name()
            ),
        });
    }
    let na_key = format!("{weight}.nested_absmax");
    let na = f32_values(&need(lookup, weight, &na_key)?, &na_key)?;
    expect_len(
        na.len(),
        nested.blocksize.blocks(blocks),
        &na_key,
        "nested_absmax entries",
    )?;
    let nm_key = format!("{weight}.nested_quant_map");
    let nm = f32_values(&need(lookup, weight, &nm_key)?, &nm_key)?;
    expect_len(nm.len(), 256, &nm_key, "nested_quant_map entries")?;
    if let Some(i) = na.iter().chain(&nm).position(|v| !v.is_finite()) {
        let (key, value, index) = if i < na.len() {
            (&na_key, na[i], i)
        } else {
            (&nm_key, nm[i - na.len()], i - na.len())
        };
        return Err(Nf4Error::NonFinite {
            tensor: key.clone(),
            index,
            value,
        });
    }
    let offset = nested.offset as f32;
    if !offset.is_finite() {
        return Err(Nf4Error::BadQuantState {
            tensor: weight.to_string(),
            problem: format!("`nested_offset` {} is not a finite f32", nested.offset),
        });
    }
    Ok(DoubleQuantAbsmax {
        codes: absmax_t.data.to_vec(),
        nested_absmax: na,
        offset,
        nested_map: Box::new(nm.try_into().expect("length checked")),
        nested_blocksize: Blocksize::new(nested.blocksize.get(), weight)?,
    })
}

fn need<'a>(
    lookup: &'a impl TensorLookup,
    weight: &str,
    key: &str,
) -> Result<RawTensor<'a>, Nf4Error> {
    lookup.tensor(key).ok_or_else(|| Nf4Error::MissingTensor {
        tensor: weight.to_string(),
        missing: key.to_string(),
    })
}

fn expect_dtype(t: &RawTensor<'_>, dtype: Dtype, key: &str) -> Result<(), Nf4Error> {
    if t.dtype == dtype {
        Ok(())
    } else {
        Err(Nf4Error::BadDtype {
            tensor: key.to_string(),
            dtype: format!("{:?}", t.dtype),
            expected: format!("{dtype:?}"),
        })
    }
}

fn expect_len(found: usize, expected: usize, key: &str, what: &str) -> Result<(), Nf4Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Nf4Error::BadLength {
            tensor: key.to_string(),
            what: what.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        })
    }
}

fn f32_values(t: &RawTensor<'_>, key: &str) -> Result<Vec<f32>, Nf4Error> {
    expect_dtype(t, Dtype::F32, key)?;
    t.to_f32_vec().ok_or_else(|| Nf4Error::BadLength {
        tensor: key.to_string(),
        what: "bytes for the shape".into(),
        expected: (4 * t.numel()).to_string(),
        found: t.data.len().to_string(),
    })
}
