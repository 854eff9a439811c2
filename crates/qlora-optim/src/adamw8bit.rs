//! [`AdamW8bit`]: AdamW with block-wise 8-bit state (Dettmers et al. 2022, *8-bit Optimizers
//! via Block-wise Quantization*), the update of bitsandbytes' `AdamW8bit`.
//!
//! Each moment is stored as one 8-bit code per element plus one f32 scale per block of 256:
//! the first moment on bnb's signed dynamic map, the second on the unsigned one (the maps of
//! `qlora_nf4::dynamic_map`, equal to bnb's). A step decodes both moments, updates them in f32
//! with the gradient, updates the parameter from the f32 moments, then stores the moments again
//! with each block's new absmax and the exact nearest code (bnb's CUDA `dQuantize`). Tensors under
//! [`MIN_8BIT_ELEMENTS`] keep f32 moments, as in bnb.
//!
//! The update is
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p(1 − lr·wd)`,
//! `p ← p − lr·(√(1−β₂ᵗ)/(1−β₁ᵗ))·m / (√v + ε√(1−β₂ᵗ))`.
//!
//! The arithmetic runs on the host (the state is read back, updated and uploaded per step); the
//! state itself lives on the parameter's device as packed u32 words and f32 scales, so it can be
//! paged with [`crate::Paged`].

use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
use qlora_nf4::dynamic_map::{
    dequantize_blockwise_8bit, dynamic_map_signed, dynamic_map_unsigned, nearest_code,
};

/// Tensors with fewer elements keep 32-bit state (bnb's `min_8bit_size`).
pub const MIN_8BIT_ELEMENTS: usize = 4096;
/// Elements per absmax block of the 8-bit state.
pub const STATE_BLOCKSIZE: usize = 256;

/// AdamW with 8-bit block-wise state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW8bit {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// ε.
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamW8bit {
    /// bnb's defaults: β = (0.9, 0.999), ε = 1e-8, weight decay 0.01.
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The settings of [`AdamW8bit`], as Burn's `AdamWConfig` is for AdamW (bnb's defaults).
#[derive(burn::config::Config, Debug, PartialEq)]
pub struct AdamW8bitConfig {
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// β₂.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// ε.
    #[config(default = 1e-8)]
    pub epsilon: f32,
    /// Decoupled weight decay.
    #[config(default = 0.01)]
    pub weight_decay: f32,
}

impl AdamW8bitConfig {
    /// The bare optimizer (to wrap in [`crate::Paged`], or to give
    /// `ModuleOptimizer::with_group`).
    pub fn build(&self) -> AdamW8bit {
        AdamW8bit {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
        }
    }

    /// The optimizer of a whole module.
    pub fn init(&self) -> ModuleOptimizer {
        ModuleOptimizer::from(self.build())
    }
}

/// The two moments of one parameter. One value per parameter, so the size difference of the
/// variants (two tensor handles or four) costs nothing worth a box.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Moments {
    /// f32 moments (small tensors).
    Full { m: Tensor<1>, v: Tensor<1> },
    /// 8-bit codes (4 a word) and one f32 absmax per block.
    Blockwise {
        m_codes: Tensor<1, Int>,
        m_absmax: Tensor<1>,
        v_codes: Tensor<1, Int>,
        v_absmax: Tensor<1>,
    },
}

/// The 8-bit state of one tensor on the host: `(m_codes, m_absmax, v_codes, v_absmax)`.
pub type BlockwiseCodes = (Vec<u8>, Vec<f32>, Vec<u8>, Vec<f32>);

/// The state of one parameter under [`AdamW8bit`].
#[derive(Clone, Debug)]
pub struct AdamW8bitState {
    step: u64,
    numel: usize,
    moments: Moments,
}

impl AdamW8bitState {
    /// Steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The first and second moments, decoded to f32.
    pub fn moments(&self) -> (Vec<f32>, Vec<f32>) {
        match &self.moments {
            Moments::Full { m, v } => (f32s(m.clone()), f32s(v.clone())),
            Moments::Blockwise {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            } => (
                dequantize_blockwise_8bit(
                    &unpack(m_codes.clone(), self.numel),
                    &f32s(m_absmax.clone()),
                    dynamic_map_signed(),
                    STATE_BLOCKSIZE,
                ),
                dequantize_blockwise_8bit(
                    &unpack(v_codes.clone(), self.numel),
                    &f32s(v_absmax.clone()),
                    dynamic_map_unsigned(),
                    STATE_BLOCKSIZE,
                ),
            ),
        }
    }

    /// The raw 8-bit codes and scales `(m_codes, m_absmax, v_codes, v_absmax)`, or `None` for a
    /// tensor with f32 state.
    pub fn codes(&self) -> Option<BlockwiseCodes> {
        match &self.moments {
            Moments::Full { .. } => None,
            Moments::Blockwise {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            } => Some((
                unpack(m_codes.clone(), self.numel),
                f32s(m_absmax.clone()),
                unpack(v_codes.clone(), self.numel),
                f32s(v_absmax.clone()),
            )),
        }
    }
}

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

fn upload(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn pack(codes: &[u8], device: &Device) -> Tensor<1, Int> {
    let words: Vec<u32> = codes
        .chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))
        })
        .collect();
    let n = words.len();
    Tensor::from_data(
        TensorData::new(words, [n]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
    )
}

fn unpack(t: Tensor<1, Int>, numel: usize) -> Vec<u8> {
    let data = t.into_data();
    let words: Vec<u32> = match data.dtype() {
        DType::U32 => data.try_to_vec::<u32>().expect("u32 words"),
        _ => data
            .convert::<i64>()
            .try_to_vec::<i64>()
            .expect("int words")
            .into_iter()
            .map(|w| w as u32)
            .collect(),
    };
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take(numel)
        .collect()
}

/// Block-wise nearest-code quantization with the new absmax of each block.
fn quantize(values: &[f32], map: &[f32; 256]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(STATE_BLOCKSIZE));
    for block in values.chunks(STATE_BLOCKSIZE) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if am > 0.0 { 1.0 / am } else { 0.0 };
        codes.extend(
            block
                .iter()
                .map(|&v| nearest_code(map, (v * inv).clamp(-1.0, 1.0))),
        );
        absmax.push(am);
    }
    (codes, absmax)
}

impl Optimizer for AdamW8bit {
    type State<const D: usize> = AdamW8bitState;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let shape = tensor.shape();
        let numel = shape.num_elements();
        let mut p = f32s(tensor);
        let g = f32s(grad);
        let (step, m, v) = match state {
            None => (0, vec![0f32; numel], vec![0f32; numel]),
            Some(s) => {
                let (m, v) = s.moments();
                (s.step, m, v)
            }
        };
        let step = step + 1;
        let (b1, b2, eps) = (self.beta_1, self.beta_2, self.epsilon);
        let lr = lr as f32;
        let correction1 = 1.0 - b1.powi(step as i32);
        let correction2 = (1.0 - b2.powi(step as i32)).sqrt();
        let step_size = -lr * correction2 / correction1;
        let decay = 1.0 - lr * self.weight_decay;
        let mut m = m;
        let mut v = v;
        for i in 0..numel {
            m[i] = m[i] * b1 + (1.0 - b1) * g[i];
            v[i] = v[i] * b2 + (1.0 - b2) * g[i] * g[i];
            if self.weight_decay > 0.0 {
                p[i] *= decay;
            }
            p[i] += step_size * (m[i] / (v[i].sqrt() + eps * correction2));
        }
        let moments = if numel < MIN_8BIT_ELEMENTS {
            Moments::Full {
                m: upload(m, &device),
                v: upload(v, &device),
            }
        } else {
            let (mc, ma) = quantize(&m, dynamic_map_signed());
            let (vc, va) = quantize(&v, dynamic_map_unsigned());
            Moments::Blockwise {
                m_codes: pack(&mc, &device),
                m_absmax: upload(ma, &device),
                v_codes: pack(&vc, &device),
                v_absmax: upload(va, &device),
            }
        };
        let tensor = Tensor::<D>::from_data(TensorData::new(p, shape), &device);
        (
            tensor,
            Some(AdamW8bitState {
                step,
                numel,
                moments,
            }),
        )
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moments = match state.moments {
            Moments::Full { m, v } => Moments::Full {
                m: m.to_device(device),
                v: v.to_device(device),
            },
            Moments::Blockwise {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            } => Moments::Blockwise {
                m_codes: m_codes.to_device(device),
                m_absmax: m_absmax.to_device(device),
                v_codes: v_codes.to_device(device),
                v_absmax: v_absmax.to_device(device),
            },
        };
        state
    }
}

impl RecordState for AdamW8bitState {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "step", self.step.into());
        out.push_scalar(prefix, "numel", (self.numel as u64).into());
        match &self.moments {
            Moments::Full { m, v } => {
                out.push_tensor(prefix, "m", m.to_data());
                out.push_tensor(prefix, "v", v.to_data());
            }
            Moments::Blockwise {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            } => {
                out.push_tensor(prefix, "m_codes", m_codes.to_data());
                out.push_tensor(prefix, "m_absmax", m_absmax.to_data());
                out.push_tensor(prefix, "v_codes", v_codes.to_data());
                out.push_tensor(prefix, "v_absmax", v_absmax.to_data());
            }
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let step = u64::try_from(src.take_scalar(prefix, "step")?).ok()?;
        let numel = u64::try_from(src.take_scalar(prefix, "numel")?).ok()? as usize;
        let float = |d: TensorData| Tensor::<1>::from_data(d.convert::<f32>(), device);
        let moments = match src.take_tensor(prefix, "m") {
            Some(m) => Moments::Full {
                m: float(m),
                v: float(src.take_tensor(prefix, "v")?),
            },
            None => {
                let words = |d: TensorData| {
                    Tensor::<1, Int>::from_data(
                        d,
                        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
                    )
                };
                Moments::Blockwise {
                    m_codes: words(src.take_tensor(prefix, "m_codes")?),
                    m_absmax: float(src.take_tensor(prefix, "m_absmax")?),
                    v_codes: words(src.take_tensor(prefix, "v_codes")?),
                    v_absmax: float(src.take_tensor(prefix, "v_absmax")?),
                }
            }
        };
        Some(Self {
            step,
            numel,
            moments,
        })
    }
}
