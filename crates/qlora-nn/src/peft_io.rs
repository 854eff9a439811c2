//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, with tensors
//! `base_model.model.<module path>.lora_A.weight` `[r, in]` and `...lora_B.weight` `[out, r]`
//! (PyTorch layout; the adapter name is not part of the key), and for DoRA
//! `...lora_magnitude_vector` `[out]`. Tensors may be F32, F16 or BF16
//! (most published adapters are half precision): they are widened to f32 on load, as PEFT's
//! `autocast_adapter_dtype` keeps adapters in f32 for training, and the folder's dtype is kept
//! ([`PeftAdapter::dtype`]) so that saving writes it back in the same precision.
//!
//! Files are written to a temporary name and renamed, so an interrupted save never leaves a
//! half-written adapter behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::{LoraAdapter, LoraConfig, LoraError, LoraMatcher};

/// The key prefix PEFT writes.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The weights of one adapted module, as read from a PEFT file.
#[derive(Debug, Clone)]
pub struct AdapterWeights {
    /// `lora_A.weight`, `[r, in]`.
    pub lora_a: Tensor<2>,
    /// `lora_B.weight`, `[out, r]`.
    pub lora_b: Tensor<2>,
    /// DoRA's `lora_magnitude_vector`, `[out]` (`None` for plain LoRA).
    pub magnitude: Option<Tensor<1>>,
}

impl AdapterWeights {
    /// A layer adapter with the scaling and dropout the config gives the module at `path`.
    pub fn into_adapter(self, config: &LoraConfig, path: &str) -> Result<LoraAdapter, LoraError> {
        let m = LoraMatcher::new(config).map_err(|(field, problem)| LoraError::Config {
            field: field.into(),
            problem,
        })?;
        let out = self.lora_b.dims()[0];
        let adapter = LoraAdapter::from_weights(
            self.lora_a,
            self.lora_b,
            m.scaling(path),
            config.lora_dropout,
        );
        Ok(match self.magnitude {
            Some(v) if v.dims() != [out] => {
                return Err(LoraError::Config {
                    field: "lora_magnitude_vector".into(),
                    problem: format!("`{path}`: {} values for {out} output rows", v.dims()[0]),
                });
            }
            Some(v) => adapter.with_magnitude(v),
            None => adapter,
        })
    }
}

/// The precision of an adapter file's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterDtype {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl AdapterDtype {
    fn of(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(Self::F32),
            Dtype::F16 => Some(Self::F16),
            Dtype::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }

    /// The values of a tensor's little-endian bytes in this dtype, widened to f32 (exactly).
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Self::F16 => bytes
                .chunks_exact(2)
                .map(|b| qlora_nf4::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Self::BF16 => bytes
                .chunks_exact(2)
                .map(|b| qlora_nf4::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        }
    }

    /// f32 values as little-endian bytes of this dtype (rounded to nearest even, as PyTorch's
    /// `.to(dtype)` does).
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|&v| qlora_nf4::f16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
            Self::BF16 => values
                .iter()
                .flat_map(|&v| qlora_nf4::bf16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        }
    }
}

/// A PEFT adapter: its config, the weights of every adapted module, by module path
/// (without PEFT's `base_model.model.` prefix), and the full parameters of its
/// `modules_to_save`.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// `adapter_config.json`.
    pub config: LoraConfig,
    /// Module path → weights.
    pub modules: BTreeMap<String, AdapterWeights>,
    /// Parameter path (`lm_head.weight`, `score.bias`) → values, for the modules the config
    /// lists in `modules_to_save`, in PyTorch layout (a linear's weight is `[out, in]`). PEFT
    /// saves them under `base_model.model.<path>` (its `modules_to_save.<adapter>` wrapper
    /// segment removed); a key that still has the segment is read too.
    pub saved: BTreeMap<String, TensorData>,
    /// Table module path (`model.embed_tokens`, `lm_head`) → the trained rows of its trainable
    /// tokens, `[n, hidden]` (PEFT's `<path>.token_adapter.trainable_tokens_delta`; the row ids
    /// are the config's `trainable_token_indices`).
    pub tokens: BTreeMap<String, TensorData>,
    /// The precision [`PeftAdapter::save`] writes: the file's, for an adapter read from a folder
    /// (the widest of its tensors), else F32.
    pub dtype: AdapterDtype,
    /// The folder it was read from (named in errors), if any.
    pub source: Option<PathBuf>,
}

fn io(path: &Path, source: std::io::Error) -> LoraError {
    LoraError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad(path: &Path, field: &str, problem: String) -> LoraError {
    LoraError::BadValue {
        path: path.display().to_string(),
        field: field.into(),
        problem,
    }
}

impl PeftAdapter {
    /// The adapter with every module, parameter and table path that starts with `from` moved
    /// under `to` instead (the paths of a model whose PEFT module paths differ from its own,
    /// [`crate::LoraModel::peft_prefix`]).
    pub fn with_module_prefix(mut self, from: &str, to: &str) -> Self {
        fn moved<V>(map: BTreeMap<String, V>, from: &str, to: &str) -> BTreeMap<String, V> {
            map.into_iter()
                .map(|(k, v)| match k.strip_prefix(from) {
                    Some(rest) => (format!("{to}{rest}"), v),
                    None => (k, v),
                })
                .collect()
        }
        self.modules = moved(self.modules, from, to);
        self.saved = moved(self.saved, from, to);
        self.tokens = moved(self.tokens, from, to);
        self
    }

    /// Reads a PEFT adapter folder onto `device`. Keys may carry PEFT's `base_model.model.`
    /// prefix or not; every tensor must be a `lora_A`/`lora_B` weight of matching rank (the
    /// config's `r` or `rank_pattern`) and come in pairs.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self, LoraError> {
        let dir = dir.as_ref();
        let config = LoraConfig::load(dir.join("adapter_config.json"))?;
        let file = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&file).map_err(|e| io(&file, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(&file, "safetensors", e.to_string()))?;
        let matcher = LoraMatcher::new(&config).map_err(|(f, p)| bad(&file, f, p))?;
        let mut halves: BTreeMap<String, [Option<Tensor<2>>; 2]> = BTreeMap::new();
        let mut magnitudes: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut saved = BTreeMap::new();
        let mut tokens = BTreeMap::new();
        let mut widest: Option<AdapterDtype> = None;
        for (name, view) in st.tensors() {
            let key = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name);
            if let Some(module) = key
                .strip_suffix(MAGNITUDE_SUFFIX)
                .or_else(|| key.strip_suffix(".lora_magnitude_vector.weight"))
            {
                let (Some(dtype), 1) = (AdapterDtype::of(view.dtype()), view.shape().len()) else {
                    return Err(bad(
                        &file,
                        &name,
                        format!(
                            "expected a 1-D F32, F16 or BF16 tensor, found {:?} {:?}",
                            view.dtype(),
                            view.shape()
                        ),
                    ));
                };
                if !config.use_dora {
                    return Err(bad(
                        &file,
                        &name,
                        "a DoRA magnitude, but adapter_config.json has use_dora false".into(),
                    ));
                }
                widest = widen(widest, dtype);
                let values = dtype.decode(view.data());
                let n = values.len();
                magnitudes.insert(
                    module.to_string(),
                    Tensor::<1>::from_data(TensorData::new(values, [n]), device),
                );
                continue;
            }
            let (module, which) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = key.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else if let Some(table) = key.strip_suffix(TOKENS_SUFFIX) {
                let (Some(dtype), 2) = (AdapterDtype::of(view.dtype()), view.shape().len()) else {
                    return Err(bad(
                        &file,
                        &name,
                        format!(
                            "expected a 2-D F32, F16 or BF16 tensor, found {:?} {:?}",
                            view.dtype(),
                            view.shape()
                        ),
                    ));
                };
                widest = widen(widest, dtype);
                let values = dtype.decode(view.data());
                tokens.insert(
                    table.to_string(),
                    TensorData::new(values, view.shape().to_vec()),
                );
                continue;
            } else if let Some(param) =
                saved_module_param(key, &matcher).or_else(|| tied_param(key, &config))
            {
                let Some(dtype) = AdapterDtype::of(view.dtype()) else {
                    return Err(bad(
                        &file,
                        &name,
                        format!(
                            "expected an F32, F16 or BF16 tensor, found {:?}",
                            view.dtype()
                        ),
                    ));
                };
                widest = widen(widest, dtype);
                let values = dtype.decode(view.data());
                saved.insert(param, TensorData::new(values, view.shape().to_vec()));
                continue;
            } else {
                return Err(bad(
                    &file,
                    &name,
                    "neither a lora_A/lora_B weight nor a parameter of a module in \
                     modules_to_save"
                        .into(),
                ));
            };
            let shape = view.shape().to_vec();
            let dtype = AdapterDtype::of(view.dtype());
            let (Some(dtype), 2) = (dtype, shape.len()) else {
                return Err(bad(
                    &file,
                    &name,
                    format!(
                        "expected a 2-D F32, F16 or BF16 tensor, found {:?} {:?}",
                        view.dtype(),
                        shape
                    ),
                ));
            };
            widest = widen(widest, dtype);
            let values = dtype.decode(view.data());
            let rank = matcher.rank(module);
            let r_dim = if which == 0 { shape[0] } else { shape[1] };
            if r_dim != rank {
                return Err(bad(
                    &file,
                    &name,
                    format!(
                        "rank {r_dim} in the tensor, but the config gives `{module}` rank {rank}"
                    ),
                ));
            }
            let t = Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), device);
            halves.entry(module.to_string()).or_default()[which] = Some(t);
        }
        let mut modules = BTreeMap::new();
        for (module, [a, b]) in halves {
            let (Some(lora_a), Some(lora_b)) = (a, b) else {
                return Err(bad(
                    &file,
                    &module,
                    "has only one of lora_A / lora_B".into(),
                ));
            };
            let magnitude = magnitudes.remove(&module);
            match &magnitude {
                None if config.use_dora => {
                    return Err(bad(
                        &file,
                        &module,
                        "use_dora is true, but the file has no lora_magnitude_vector for it".into(),
                    ));
                }
                Some(m) if m.dims()[0] != lora_b.dims()[0] => {
                    return Err(bad(
                        &file,
                        &module,
                        format!(
                            "lora_magnitude_vector has {} values, lora_B {} output rows",
                            m.dims()[0],
                            lora_b.dims()[0]
                        ),
                    ));
                }
                _ => {}
            }
            modules.insert(
                module,
                AdapterWeights {
                    lora_a,
                    lora_b,
                    magnitude,
                },
            );
        }
        if let Some(module) = magnitudes.keys().next() {
            return Err(bad(
                &file,
                module,
                "has a lora_magnitude_vector but no lora_A / lora_B".into(),
            ));
        }
        Ok(Self {
            config,
            modules,
            saved,
            tokens,
            dtype: widest.unwrap_or_default(),
            source: Some(dir.to_path_buf()),
        })
    }

    /// Collects the weights of named layer adapters, ready to save.
    pub fn from_adapters<'a>(
        config: LoraConfig,
        adapters: impl IntoIterator<Item = (&'a str, &'a LoraAdapter)>,
    ) -> Self {
        let modules = adapters
            .into_iter()
            .map(|(path, a)| {
                (
                    path.to_string(),
                    AdapterWeights {
                        lora_a: a.lora_a.val(),
                        lora_b: a.lora_b.val(),
                        magnitude: a.magnitude.as_ref().map(|m| m.val()),
                    },
                )
            })
            .collect();
        Self {
            config,
            modules,
            saved: BTreeMap::new(),
            tokens: BTreeMap::new(),
            dtype: AdapterDtype::F32,
            source: None,
        }
    }

    /// The same adapter written in `dtype` by [`PeftAdapter::save`].
    pub fn with_dtype(mut self, dtype: AdapterDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// What errors name for this adapter: its folder, or `adapter` when it was not read from one.
    pub fn origin(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "adapter".to_string(), |d| d.display().to_string())
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// needed), each through a temporary file and a rename, with tensors in [`Self::dtype`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), LoraError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (module, w) in &self.modules {
            for (suffix, t) in [("lora_A", &w.lora_a), ("lora_B", &w.lora_b)] {
                let data = t.clone().into_data().convert::<f32>();
                let bytes = self
                    .dtype
                    .encode(data.as_slice::<f32>().expect("f32 values"));
                tensors.push((
                    format!("{PEFT_PREFIX}{module}.{suffix}.weight"),
                    t.dims().to_vec(),
                    bytes,
                ));
            }
            if let Some(m) = &w.magnitude {
                let data = m.clone().into_data().convert::<f32>();
                tensors.push((
                    format!("{PEFT_PREFIX}{module}{MAGNITUDE_SUFFIX}"),
                    m.dims().to_vec(),
                    self.dtype
                        .encode(data.as_slice::<f32>().expect("f32 values")),
                ));
            }
        }
        for (param, data) in &self.saved {
            let data = data.clone().convert::<f32>();
            tensors.push((
                format!("{PEFT_PREFIX}{param}"),
                data.shape().to_vec(),
                self.dtype
                    .encode(data.as_slice::<f32>().expect("f32 values")),
            ));
        }
        for (table, data) in &self.tokens {
            let data = data.clone().convert::<f32>();
            tensors.push((
                format!("{PEFT_PREFIX}{table}{TOKENS_SUFFIX}"),
                data.shape().to_vec(),
                self.dtype
                    .encode(data.as_slice::<f32>().expect("f32 values")),
            ));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(self.dtype.safetensors(), s.clone(), b)
                        .expect("consistent view"),
                )
            })
            .collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| bad(dir, "safetensors", e.to_string()))?;
        write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
        write_atomic(
            &dir.join("adapter_config.json"),
            self.config.to_peft_json().as_bytes(),
        )
    }
}

/// The parameter path of `key` if it belongs to a module of `modules_to_save`
/// (`lm_head.weight`; PEFT's wrapper segment `.modules_to_save.<adapter>` removed if present).
fn saved_module_param(key: &str, matcher: &LoraMatcher) -> Option<String> {
    let key = match key.split_once(".modules_to_save.") {
        Some((module, rest)) => format!("{module}.{}", rest.split_once('.')?.1),
        None => key.to_string(),
    };
    let (module, _param) = key.rsplit_once('.')?;
    matcher.is_module_to_save(module).then_some(key)
}

/// The key suffix of a DoRA magnitude as PEFT 0.21 saves it (its `.weight` dropped).
const MAGNITUDE_SUFFIX: &str = ".lora_magnitude_vector";

/// The key suffix of a table's trainable tokens (PEFT's `TrainableTokensWrapper`).
const TOKENS_SUFFIX: &str = ".token_adapter.trainable_tokens_delta";

/// A weight PEFT saves for the tied partner of a `modules_to_save` table under
/// `ensure_weight_tying` (it writes both `model.embed_tokens.weight` and `lm_head.weight`,
/// though its config names only one of them): kept, for the model to put into its tied table.
fn tied_param(key: &str, config: &LoraConfig) -> Option<String> {
    (config.ensure_weight_tying && key.ends_with(".weight") && !key.contains(".lora_"))
        .then(|| key.to_string())
}

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LoraError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path, e)
    })
}

/// The dtype of a file whose tensors so far were `so_far` and that has one more of `d`: F32 over
/// either half type, and two different half types widen to F32 too.
fn widen(so_far: Option<AdapterDtype>, d: AdapterDtype) -> Option<AdapterDtype> {
    Some(match so_far {
        None => d,
        Some(c) if c == d => c,
        Some(_) => AdapterDtype::F32,
    })
}
