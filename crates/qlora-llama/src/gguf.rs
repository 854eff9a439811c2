//! GGUF (llama.cpp) files: [`GgufFile`] reads the header (typed key/value pairs and tensor
//! infos) and dequantizes tensors one at a time; the block formats are F32, F16, BF16, Q8_0,
//! Q4_0 and Q4_1 (32 elements a block; see `FORMATS.md` §5).
//!
//! Every count and offset is checked against the file before anything is allocated, so a
//! truncated or hostile file gives an error naming the file and the field, never a panic or a
//! huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use qlora_nf4::f16;

use crate::LlamaError;
use crate::read_at::read_exact_at;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// A `uint32` (the type llama.cpp reads its hyperparameters as).
    U32(u32),
    /// An `int32`.
    I32(i32),
    /// A `float32` (the type llama.cpp reads its float hyperparameters and `adapter.lora.alpha`
    /// as).
    F32(f32),
    /// The other unsigned integer types (8, 16, 64 bits).
    U64(u64),
    /// The other signed integer types (8, 16, 64 bits).
    I64(i64),
    /// `float64`.
    F64(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The tensor element types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: f16 scale, 32 × i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 32 nibbles, value `d·(q − 8)`.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 nibbles, value `d·q + m`.
    Q4_1,
}

impl GgmlType {
    /// From the file's type id.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }
    /// The file's type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }
    /// (elements, bytes) of one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
        }
    }
}

/// Name of a ggml type id (for errors about the ones not supported).
fn type_name(id: u32) -> String {
    let known = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    known.get(id as usize).map_or_else(
        || format!("type id {id}"),
        |n| format!("{n} (type id {id})"),
    )
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// GGUF dims, `[ne0, ne1, ...]` (ne0 varies fastest: the reverse of PyTorch's shape).
    pub dims: Vec<usize>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// Bytes of the tensor's data.
    pub fn bytes(&self) -> usize {
        let (n, b) = self.ty.block();
        self.numel() / n * b
    }
    /// The PyTorch shape (dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An open GGUF file (see the module docs).
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos by name.
    pub tensors: BTreeMap<String, GgufTensorInfo>,
    data_start: u64,
}

struct Reader<R> {
    r: R,
    remaining: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, String> {
        if n > self.remaining {
            return Err(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.remaining
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| format!("reading {what}: {e}"))?;
        self.remaining -= n;
        Ok(v)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        String::from_utf8(self.bytes(n, what)?).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U64(self.arr::<1>(what)?[0] as u64),
            1 => GgufValue::I64(self.arr::<1>(what)?[0] as i8 as i64),
            2 => GgufValue::U64(u16::from_le_bytes(self.arr(what)?) as u64),
            3 => GgufValue::I64(i16::from_le_bytes(self.arr(what)?) as i64),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => match self.arr::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{what}: bool byte {b}")),
            },
            8 => GgufValue::Str(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(format!("{what}: arrays nested too deep"));
                }
                let ety = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least `min` bytes of the file: a count that cannot fit
                // in what is left is an error before anything is allocated.
                let min: u64 = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("{what}: unknown array element type {t}")),
                };
                if n.saturating_mul(min) > self.remaining {
                    return Err(format!(
                        "{what}: an array of {n} elements needs at least {} bytes, {} are left \
                         in the file",
                        n.saturating_mul(min),
                        self.remaining
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, what, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr(what)?)),
            t => return Err(format!("{what}: unknown value type {t}")),
        })
    }
}

impl GgufFile {
    /// Opens `path` and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| LlamaError::io(&path, e))?;
        let len = file.metadata().map_err(|e| LlamaError::io(&path, e))?.len();
        let mut r = Reader {
            r: BufReader::new(file.try_clone().map_err(|e| LlamaError::io(&path, e))?),
            remaining: len,
        };
        let header = (|| -> Result<_, String> {
            let magic = r.arr::<4>("magic")?;
            if &magic != b"GGUF" {
                return Err(format!("bad magic {magic:?}: not a GGUF file"));
            }
            let version = r.u32("version")?;
            if !(2..=3).contains(&version) {
                return Err(format!(
                    "unsupported GGUF version {version} (2 and 3 are read)"
                ));
            }
            let n_tensors = r.u64("tensor count")?;
            let n_kv = r.u64("metadata count")?;
            // Each metadata pair takes at least 12 bytes (key length, value type) and each
            // tensor entry at least 24 (name length, dimension count, type, offset).
            for (what, n, min) in [
                ("metadata count", n_kv, 12),
                ("tensor count", n_tensors, 24),
            ] {
                if n.saturating_mul(min) > r.remaining {
                    return Err(format!(
                        "truncated: {what} {n} cannot fit in the {} bytes left in the file",
                        r.remaining
                    ));
                }
            }
            let mut metadata = BTreeMap::new();
            for i in 0..n_kv {
                let key = r.string(&format!("metadata key {i}"))?;
                let ty = r.u32(&key)?;
                let v = r.value(ty, &key, 0)?;
                metadata.insert(key, v);
            }
            let mut infos = Vec::new();
            for i in 0..n_tensors {
                let name = r.string(&format!("tensor name {i}"))?;
                let nd = r.u32(&name)?;
                if nd == 0 || nd > 4 {
                    return Err(format!("tensor `{name}`: {nd} dimensions"));
                }
                let dims = (0..nd)
                    .map(|_| r.u64(&name).map(|d| d as usize))
                    .collect::<Result<Vec<_>, _>>()?;
                let ty_id = r.u32(&name)?;
                let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                    format!(
                        "tensor `{name}`: type {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                        type_name(ty_id)
                    )
                })?;
                let offset = r.u64(&name)?;
                infos.push((name, GgufTensorInfo { dims, ty, offset }));
            }
            Ok((version, metadata, infos))
        })();
        let (version, metadata, infos) = header.map_err(|p| LlamaError::format(&path, p))?;
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                LlamaError::format(&path, "general.alignment is not a power of two")
            })?,
        };
        let header_end = len - r.remaining;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, info) in infos {
            let bad = |p: String| LlamaError::format(&path, format!("tensor `{name}`: {p}"));
            let (n, _) = info.ty.block();
            if info.dims[0] % n != 0 {
                return Err(bad(format!(
                    "first dimension {} is not a multiple of the {:?} block of {n}",
                    info.dims[0], info.ty
                )));
            }
            let numel = info
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| bad("dimensions overflow".into()))?;
            let bytes = numel / n as u64 * info.ty.block().1 as u64;
            let end = data_start
                .checked_add(info.offset)
                .and_then(|s| s.checked_add(bytes));
            if end.is_none_or(|e| e > len) {
                return Err(bad(format!(
                    "data (offset {}, {bytes} bytes) runs past the end of the file ({len} bytes): truncated",
                    info.offset
                )));
            }
            if info.offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {} is not aligned to {alignment}",
                    info.offset
                )));
            }
            if tensors.insert(name.clone(), info).is_some() {
                return Err(LlamaError::format(
                    &path,
                    format!("tensor `{name}` appears twice"),
                ));
            }
        }
        let _ = r.r.seek(SeekFrom::Start(0));
        Ok(Self {
            path,
            file,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Reads and dequantizes tensor `name` to f32 (row-major over the PyTorch shape).
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), LlamaError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| LlamaError::MissingTensor {
                path: self.path.display().to_string(),
                tensor: name.to_string(),
            })?;
        let mut bytes = vec![0u8; info.bytes()];
        read_exact_at(&self.file, &mut bytes, self.data_start + info.offset)
            .map_err(|e| LlamaError::io(&self.path, e))?;
        Ok((info.shape(), dequantize(info.ty, &bytes)))
    }
}

fn h(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Dequantizes `bytes` of type `ty` to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(h).collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| qlora_nf4::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|blk| {
                let d = h(&blk[..2]);
                blk[2..].iter().map(move |&q| d * (q as i8) as f32)
            })
            .collect(),
        GgmlType::Q4_0 => bytes
            .chunks_exact(18)
            .flat_map(|blk| {
                let d = h(&blk[..2]);
                nibbles(&blk[2..]).map(move |q| d * (q as f32 - 8.0))
            })
            .collect(),
        GgmlType::Q4_1 => bytes
            .chunks_exact(20)
            .flat_map(|blk| {
                let (d, m) = (h(&blk[..2]), h(&blk[2..4]));
                nibbles(&blk[4..]).map(move |q| d * q as f32 + m)
            })
            .collect(),
    }
}

/// The 32 codes of a 4-bit block: low nibbles of bytes 0..16, then the high nibbles.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|b| b & 0x0f).chain(qs.iter().map(|b| b >> 4))
}
