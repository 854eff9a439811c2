//! bnb's `quant_state` JSON (`QuantState.as_dict(packed=True)`, stored as UTF-8 bytes in the
//! U8 tensor `<weight>.quant_state.bitsandbytes__<nf4|fp4>`), read strictly and written
//! byte-identical to Python's `json.dumps` (key order, `", "` and `": "` separators, float repr).

use serde_json::{Map, Value};

use crate::{Blocksize, FloatDtype, Nf4Error, QuantType, python_repr};

/// The non-tensor part of a bnb 4-bit quant state.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantStateJson {
    /// `quant_type`.
    pub quant_type: QuantType,
    /// `blocksize`.
    pub blocksize: Blocksize,
    /// `dtype` of the original weight.
    pub dtype: FloatDtype,
    /// `shape` of the original weight.
    pub shape: Vec<usize>,
    /// The nested part, when double-quantized.
    pub nested: Option<NestedJson>,
}

/// The double-quant keys of a quant state.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedJson {
    /// `nested_blocksize`.
    pub blocksize: Blocksize,
    /// `nested_dtype` (bnb always writes `"float32"`).
    pub dtype: FloatDtype,
    /// `nested_offset`, a Python float holding an f32 value.
    pub offset: f64,
}

const KEYS: [&str; 4] = ["quant_type", "blocksize", "dtype", "shape"];
const NESTED_KEYS: [&str; 3] = ["nested_blocksize", "nested_dtype", "nested_offset"];

impl QuantStateJson {
    /// Parses the JSON bytes of the tensor `tensor` (named in errors).
    pub fn parse(bytes: &[u8], tensor: &str) -> Result<Self, Nf4Error> {
        let bad = |problem: String| Nf4Error::BadQuantState {
            tensor: tensor.to_string(),
            problem,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !KEYS.contains(&k.as_str()) && !NESTED_KEYS.contains(&k.as_str()))
        {
            return Err(bad(format!("unknown key `{k}`")));
        }
        if let Some(k) = KEYS.iter().find(|k| !obj.contains_key(**k)) {
            return Err(bad(format!("missing key `{k}`")));
        }
        let quant_type = QuantType::parse(str_field(obj, "quant_type", &bad)?, tensor)?;
        let blocksize = Blocksize::new(usize_field(obj, "blocksize", &bad)?, tensor)?;
        let dtype = dtype_field(obj, "dtype", &bad)?;
        let shape = obj["shape"]
            .as_array()
            .ok_or_else(|| bad("`shape` is not a list".into()))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| bad(format!("`shape` entry {d} is not a non-negative integer")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let present = NESTED_KEYS.iter().filter(|k| obj.contains_key(**k)).count();
        let nested = match present {
            0 => None,
            3 => Some(NestedJson {
                blocksize: Blocksize::new(usize_field(obj, "nested_blocksize", &bad)?, tensor)?,
                dtype: dtype_field(obj, "nested_dtype", &bad)?,
                offset: obj["nested_offset"]
                    .as_f64()
                    .ok_or_else(|| bad("`nested_offset` is not a number".into()))?,
            }),
            _ => {
                let missing = NESTED_KEYS
                    .iter()
                    .find(|k| !obj.contains_key(**k))
                    .expect("one is missing");
                return Err(bad(format!(
                    "missing key `{missing}` (other nested keys are present)"
                )));
            }
        };
        Ok(Self {
            quant_type,
            blocksize,
            dtype,
            shape,
            nested,
        })
    }

    /// The JSON text bnb writes for this state.
    pub fn to_json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.quant_type.as_str(),
            self.blocksize.get(),
            self.dtype.torch_name(),
            shape.join(", ")
        );
        if let Some(n) = &self.nested {
            s.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"{}\", \"nested_offset\": {}",
                n.blocksize.get(),
                n.dtype.torch_name(),
                python_repr(n.offset)
            ));
        }
        s.push('}');
        s
    }
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    bad: &impl Fn(String) -> Nf4Error,
) -> Result<&'a str, Nf4Error> {
    obj[key]
        .as_str()
        .ok_or_else(|| bad(format!("`{key}` is not a string")))
}

fn usize_field(
    obj: &Map<String, Value>,
    key: &str,
    bad: &impl Fn(String) -> Nf4Error,
) -> Result<usize, Nf4Error> {
    obj[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| bad(format!("`{key}` is not a non-negative integer")))
}

fn dtype_field(
    obj: &Map<String, Value>,
    key: &str,
    bad: &impl Fn(String) -> Nf4Error,
) -> Result<FloatDtype, Nf4Error> {
    let name = str_field(obj, key, bad)?;
    FloatDtype::from_torch_name(name).ok_or_else(|| {
        bad(format!(
            "`{key}` is `{name}`, expected float32, bfloat16 or float16"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.2585448920726776}"#;

    #[test]
    fn round_trips_bnb_text() {
        let q = QuantStateJson::parse(GOLDEN.as_bytes(), "w").unwrap();
        assert_eq!(q.shape, vec![64, 64]);
        assert_eq!(q.to_json(), GOLDEN);
    }

    #[test]
    fn refuses_unknown_and_missing_keys() {
        let unknown = GOLDEN.replace("\"dtype\"", "\"dtypo\"");
        let e = QuantStateJson::parse(unknown.as_bytes(), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `dtypo`"), "{e}");
        let partial = r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4], "nested_offset": 0.5}"#;
        let e = QuantStateJson::parse(partial.as_bytes(), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing key `nested_blocksize`"), "{e}");
        let e = QuantStateJson::parse(b"{\"quant_type\": \"nf4\"}", "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing key `blocksize`"), "{e}");
        let e = QuantStateJson::parse(b"\xff", "w").unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
