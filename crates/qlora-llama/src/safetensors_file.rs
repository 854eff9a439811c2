//! [`SafetensorsFile`]: a safetensors file opened for reading one tensor at a time.
//!
//! Only the header is held in memory; each tensor is read with a positional read when asked for,
//! so loading a model never holds more than one dense tensor besides what it keeps. The header
//! is validated on open as the `safetensors` format defines it: length inside the file, UTF-8
//! JSON object, no duplicate names, known dtypes, byte lengths equal to shape × dtype size,
//! offsets inside the data and not overlapping.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use qlora_nf4::{Dtype, RawTensor};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::LlamaError;
use crate::read_at::read_exact_at;

/// Where one tensor lies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub offsets: (u64, u64),
}

/// An open safetensors file (see the module docs).
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    data_start: u64,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

/// The header's top level, kept in file order so that duplicate names can be detected.
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Value>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Bytes per element of the dtypes this crate reads.
pub fn dtype_size(dtype: Dtype) -> Option<usize> {
    Some(match dtype {
        Dtype::BOOL | Dtype::U8 | Dtype::I8 => 1,
        Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
        Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
        Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        _ => return None,
    })
}

fn parse_dtype(s: &str) -> Option<Dtype> {
    Some(match s {
        "BOOL" => Dtype::BOOL,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "I16" => Dtype::I16,
        "U16" => Dtype::U16,
        "F32" => Dtype::F32,
        "I32" => Dtype::I32,
        "U32" => Dtype::U32,
        "F64" => Dtype::F64,
        "I64" => Dtype::I64,
        "U64" => Dtype::U64,
        _ => return None,
    })
}

/// Largest header accepted (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

impl SafetensorsFile {
    /// Opens and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref().to_path_buf();
        let bad = |p: String| LlamaError::format(&path, p);
        let file = File::open(&path).map_err(|e| LlamaError::io(&path, e))?;
        let len = file.metadata().map_err(|e| LlamaError::io(&path, e))?.len();
        if len < 8 {
            return Err(bad(format!(
                "truncated: {len} bytes, too short for the 8-byte header length"
            )));
        }
        let mut n = [0u8; 8];
        read_exact_at(&file, &mut n, 0).map_err(|e| LlamaError::io(&path, e))?;
        let n = u64::from_le_bytes(n);
        if n > len - 8 {
            return Err(bad(format!(
                "header length {n} runs past the end of the file ({len} bytes)"
            )));
        }
        if n > MAX_HEADER {
            return Err(bad(format!("header length {n} exceeds {MAX_HEADER} bytes")));
        }
        let mut header = vec![0u8; n as usize];
        read_exact_at(&file, &mut header, 8).map_err(|e| LlamaError::io(&path, e))?;
        let header =
            std::str::from_utf8(&header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
        let Entries(entries) = serde_json::from_str(header.trim_end_matches(' '))
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let data_start = 8 + n;
        let data_len = len - data_start;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in entries {
            if name == "__metadata__" {
                let Value::Object(m) = v else {
                    return Err(bad("`__metadata__` is not an object".into()));
                };
                for (k, v) in m {
                    let Value::String(s) = v else {
                        return Err(bad(format!("`__metadata__.{k}` is not a string")));
                    };
                    metadata.insert(k, s);
                }
                continue;
            }
            let info = parse_info(&name, &v, data_len)
                .map_err(|p| bad(format!("tensor `{name}`: {p}")))?;
            if tensors.insert(name.clone(), info).is_some() {
                return Err(bad(format!("tensor `{name}` appears twice in the header")));
            }
        }
        let mut spans: Vec<(&String, (u64, u64))> =
            tensors.iter().map(|(k, t)| (k, t.offsets)).collect();
        spans.sort_by_key(|(_, o)| *o);
        for w in spans.windows(2) {
            if w[1].1.0 < w[0].1.1 {
                return Err(bad(format!(
                    "tensors `{}` and `{}` overlap (bytes {:?} and {:?})",
                    w[0].0, w[1].0, w[0].1, w[1].1
                )));
            }
        }
        Ok(Self {
            path,
            file,
            data_start,
            tensors,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Reads the tensor `name`.
    pub fn read(&self, name: &str) -> Result<RawTensor<'static>, LlamaError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| LlamaError::MissingTensor {
                path: self.path.display().to_string(),
                tensor: name.to_string(),
            })?;
        let (a, b) = info.offsets;
        let mut data = vec![0u8; (b - a) as usize];
        read_exact_at(&self.file, &mut data, self.data_start + a)
            .map_err(|e| LlamaError::io(&self.path, e))?;
        Ok(RawTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            data: data.into(),
        })
    }
}

fn parse_info(name: &str, v: &Value, data_len: u64) -> Result<TensorInfo, String> {
    let _ = name;
    let Value::Object(m) = v else {
        return Err("entry is not an object".into());
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "dtype" | "shape" | "data_offsets") {
            return Err(format!("unknown field `{k}`"));
        }
    }
    let dtype_name = m
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("missing `dtype`")?;
    let dtype =
        parse_dtype(dtype_name).ok_or_else(|| format!("unsupported dtype `{dtype_name}`"))?;
    let shape = m
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("missing `shape`")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or("`shape` is not a list of non-negative integers")?;
    let offsets = m
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or("`data_offsets` is not [begin, end]")?;
    if offsets.0 > offsets.1 || offsets.1 > data_len {
        return Err(format!(
            "data_offsets {:?} outside the data section ({data_len} bytes)",
            offsets
        ));
    }
    let size = dtype_size(dtype).expect("parsed dtypes have sizes") as u64;
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or("shape overflows")?;
    let bytes = numel.checked_mul(size).ok_or("shape overflows")?;
    if bytes != offsets.1 - offsets.0 {
        return Err(format!(
            "{dtype_name} {shape:?} needs {bytes} bytes but data_offsets span {}",
            offsets.1 - offsets.0
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        offsets,
    })
}
