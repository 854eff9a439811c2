//! Where a model's weights come from: the [`WeightSource`] trait (tensors by HF name, as host
//! floats or as bnb-4bit quantized tensors) and [`HfCheckpoint`], a HF model folder with one
//! `model.safetensors` or shards listed in `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qlora_nf4::{Dtype, QuantizedTensor, RawTensor, bf16, bnb_companion_suffixes, f16};
use serde_json::Value;

use crate::{LlamaConfig, LlamaError, SafetensorsFile};

/// Float values of one tensor as the file holds them.
#[derive(Debug, Clone, PartialEq)]
pub enum HostFloats {
    /// 32-bit.
    F32(Vec<f32>),
    /// bfloat16.
    BF16(Vec<bf16>),
    /// IEEE half.
    F16(Vec<f16>),
}

impl HostFloats {
    /// The values as f32 (exact for every variant).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            HostFloats::F32(v) => v,
            HostFloats::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostFloats::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Index and value of the first NaN or ±Inf.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        fn find<T: Copy>(v: &[T], f: impl Fn(T) -> f32) -> Option<(usize, f32)> {
            v.iter()
                .position(|&x| !f(x).is_finite())
                .map(|i| (i, f(v[i])))
        }
        match self {
            HostFloats::F32(v) => find(v, |x| x),
            HostFloats::BF16(v) => find(v, |x| x.to_f32()),
            HostFloats::F16(v) => find(v, |x| x.to_f32()),
        }
    }
}

/// A float tensor read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape (PyTorch layout).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: HostFloats,
}

impl HostTensor {
    /// Decodes a raw F32/BF16/F16 tensor; `path`/`name` name it in errors.
    pub fn from_raw(raw: RawTensor<'_>, path: &str, name: &str) -> Result<Self, LlamaError> {
        let values = match raw.dtype {
            Dtype::F32 => HostFloats::F32(bytemuck_cast(&raw.data, f32::from_le_bytes)),
            Dtype::BF16 => HostFloats::BF16(bytemuck_cast(&raw.data, |b: [u8; 2]| {
                bf16::from_bits(u16::from_le_bytes(b))
            })),
            Dtype::F16 => HostFloats::F16(bytemuck_cast(&raw.data, |b: [u8; 2]| {
                f16::from_bits(u16::from_le_bytes(b))
            })),
            other => {
                return Err(LlamaError::Tensor {
                    path: path.into(),
                    tensor: name.into(),
                    problem: format!("dtype {other:?} is not a float type (F32, BF16, F16)"),
                });
            }
        };
        Ok(Self {
            shape: raw.shape,
            values,
        })
    }
}

fn bytemuck_cast<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk of N bytes")))
        .collect()
}

/// A source of model weights by HF tensor name.
pub trait WeightSource {
    /// Names the source in errors (a file or folder).
    fn describe(&self) -> String;
    /// True if `name` is present (as a float or a 4-bit tensor).
    fn contains(&self, name: &str) -> bool;
    /// The float tensor `name` in PyTorch layout.
    fn read_float(&self, name: &str) -> Result<HostTensor, LlamaError>;
    /// Whether the source is a multimodal checkpoint whose text model is read (Gemma 3's
    /// `Gemma3ForConditionalGeneration`); PEFT names that model's modules
    /// `model.language_model.*`.
    fn is_multimodal(&self) -> bool {
        false
    }
    /// The weight `name` if the source stores it already quantized (bnb-4bit); `Ok(None)` if it
    /// is a float tensor.
    fn read_quantized(&self, name: &str) -> Result<Option<QuantizedTensor>, LlamaError> {
        let _ = name;
        Ok(None)
    }
}

/// A HF model folder: `config.json` and `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`. Float (F32/BF16/F16) and bnb-4bit weights are both read.
#[derive(Debug)]
pub struct HfCheckpoint {
    dir: PathBuf,
    config: LlamaConfig,
    raw_config: Value,
    files: Vec<SafetensorsFile>,
    index: BTreeMap<String, usize>,
    /// HF text-model name → stored name, for a text model stored inside a multimodal
    /// checkpoint ([`text_model_names`]).
    stored: BTreeMap<String, String>,
}

/// The names of a text model stored inside a multimodal checkpoint (Gemma 3's
/// `Gemma3ForConditionalGeneration`): `model.language_model.*` (the module paths of
/// transformers' classes) or `language_model.model.*` and `language_model.lm_head.*` (the
/// original checkpoints' names, which transformers' `save_pretrained` writes), each mapped to
/// the text model's `model.*` / `lm_head.*`; the vision tower and projector are not read. Empty
/// where the text model's own names are stored.
fn text_model_names(index: &BTreeMap<String, usize>) -> BTreeMap<String, String> {
    if index.contains_key("model.embed_tokens.weight") {
        return BTreeMap::new();
    }
    let prefixes = [
        ("model.language_model.", "model."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ];
    index
        .keys()
        .filter_map(|k| {
            prefixes.iter().find_map(|(stored, hf)| {
                k.strip_prefix(stored)
                    .map(|rest| (format!("{hf}{rest}"), k.clone()))
            })
        })
        .collect()
}

impl HfCheckpoint {
    /// Opens `dir`, validating `config.json` and every safetensors header.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let config = LlamaConfig::load(&config_path)?;
        let raw_config: Value = serde_json::from_str(
            &std::fs::read_to_string(&config_path).map_err(|e| LlamaError::io(&config_path, e))?,
        )
        .map_err(|e| LlamaError::format(&config_path, e.to_string()))?;
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LlamaError::io(&index_path, e))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| LlamaError::format(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| LlamaError::format(&index_path, "no `weight_map` object"))?;
            let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    LlamaError::format(
                        &index_path,
                        format!("`weight_map.{tensor}` is not a file name"),
                    )
                })?;
                if file.contains('/') || file.contains("..") {
                    return Err(LlamaError::format(
                        &index_path,
                        format!("`weight_map.{tensor}` names `{file}` outside the folder"),
                    ));
                }
                let id = match shard_ids.get(file) {
                    Some(&id) => id,
                    None => {
                        let shard = dir.join(file);
                        if !shard.exists() {
                            return Err(LlamaError::format(
                                &index_path,
                                format!("shard `{file}` (holding `{tensor}`) does not exist"),
                            ));
                        }
                        files.push(SafetensorsFile::open(&shard)?);
                        shard_ids.insert(file.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                if !files[id].tensors().contains_key(tensor) {
                    return Err(LlamaError::MissingTensor {
                        path: files[id].path().display().to_string(),
                        tensor: tensor.clone(),
                    });
                }
                index.insert(tensor.clone(), id);
            }
        } else if single.exists() {
            let f = SafetensorsFile::open(&single)?;
            for name in f.tensors().keys() {
                index.insert(name.clone(), 0);
            }
            files.push(f);
        } else {
            return Err(LlamaError::format(
                &dir,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        }
        // Only Gemma 3's multimodal checkpoints are read for their text model.
        let multimodal = raw_config.get("model_type").and_then(Value::as_str) == Some("gemma3");
        let stored = if multimodal {
            text_model_names(&index)
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            dir,
            config,
            raw_config,
            files,
            index,
            stored,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// `config.json` as read (with fields this crate does not model, such as
    /// `quantization_config`).
    pub fn raw_config(&self) -> &Value {
        &self.raw_config
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name under which HF tensor `name` is stored.
    fn stored_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.stored.get(name).map_or(name, String::as_str)
    }

    fn raw(&self, name: &str) -> Result<RawTensor<'static>, LlamaError> {
        let stored = self.stored_name(name);
        match self.index.get(stored) {
            Some(&i) => self.files[i].read(stored),
            None => Err(LlamaError::MissingTensor {
                path: self.describe(),
                tensor: name.to_string(),
            }),
        }
    }

    fn file_of(&self, name: &str) -> String {
        self.index.get(self.stored_name(name)).map_or_else(
            || self.describe(),
            |&i| self.files[i].path().display().to_string(),
        )
    }
}

impl WeightSource for HfCheckpoint {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(self.stored_name(name))
    }

    fn is_multimodal(&self) -> bool {
        !self.stored.is_empty()
    }

    fn read_float(&self, name: &str) -> Result<HostTensor, LlamaError> {
        HostTensor::from_raw(self.raw(name)?, &self.file_of(name), name)
    }

    fn read_quantized(&self, name: &str) -> Result<Option<QuantizedTensor>, LlamaError> {
        let is_4bit = ["nf4", "fp4"]
            .iter()
            .any(|q| self.contains(&format!("{name}.quant_state.bitsandbytes__{q}")));
        if !is_4bit {
            return Ok(None);
        }
        let mut parts = BTreeMap::new();
        parts.insert(name.to_string(), self.raw(name)?);
        for suffix in bnb_companion_suffixes() {
            let key = format!("{name}{suffix}");
            if self.contains(&key) {
                parts.insert(key.clone(), self.raw(&key)?);
            }
        }
        QuantizedTensor::from_bnb(&parts, name)
            .map(Some)
            .map_err(|source| LlamaError::Nf4 {
                path: self.file_of(name),
                source,
            })
    }
}
