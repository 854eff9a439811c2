//! Rotary position embedding (Su et al. 2021) in HF LLaMA's `rotate_half` form: each head is
//! split into a first and a second half, and position `p` rotates the pair `(x[i], x[i + d/2])`
//! by the angle `p · inv_freq[i]`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::{RopeConfig, RopeScaling};

/// The inverse frequencies of one head and the tables they give.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq[i] = 1 / θ^(2i/d)` (f32, as transformers computes it), then scaled as
    /// `config.scaling` says.
    pub fn new(config: &RopeConfig, head_dim: usize) -> Self {
        let base = config.theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match config.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in &mut inv_freq {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    *f = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    } as f32;
                }
            }
        }
        Self { inv_freq }
    }

    /// The inverse frequencies, `head_dim / 2` of them.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and `sin` of positions `start..start + len`, each `[len, head_dim]` (the angle
    /// table repeated for both halves).
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let positions: Vec<usize> = (start..start + len).collect();
        self.tables_at(&positions, device)
    }

    /// `cos` and `sin` of the given positions, each `[positions.len(), head_dim]`: a
    /// padding-free row's positions restart at every sample.
    pub fn tables_at(&self, positions: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
        let half = self.inv_freq.len();
        let len = positions.len();
        let mut cos = Vec::with_capacity(len * 2 * half);
        let mut sin = Vec::with_capacity(len * 2 * half);
        for &p in positions {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| a.cos()));
                sin.extend(row.iter().map(|a| a.sin()));
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [len, 2 * half]), device),
            Tensor::from_data(TensorData::new(sin, [len, 2 * half]), device),
        )
    }

    /// Rotates `x` `[batch, heads, len, head_dim]` with tables from [`Rope::tables`]:
    /// `x·cos + rotate_half(x)·sin`, `rotate_half(x) = [-x₂, x₁]`.
    /// One pass forward and backward ([`qlora_fused::rope`]).
    pub fn apply(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
        qlora_fused::rope(x, cos.clone(), sin.clone())
    }
}
