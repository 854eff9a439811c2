//! Rotary position embedding (Su et al. 2021) in HF LLaMA's `rotate_half` form: each head is
//! split into a first and a second half, and position `p` rotates the pair `(x[i], x[i + d/2])`
//! by the angle `p · inv_freq[i]`. LongRoPE (Phi-3) keeps a second set of frequencies for
//! passes beyond the pre-training context and scales cos and sin.

use burn::tensor::{Device, Tensor, TensorData};

use crate::{RopeConfig, RopeScaling};

/// The inverse frequencies of one head and the tables they give.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// LongRoPE: the frequencies of passes whose last position is past the original context,
    /// and that context.
    long: Option<(Vec<f32>, usize)>,
    /// The scale of cos and sin (LongRoPE's attention factor; 1 otherwise).
    scale: f32,
}

impl Rope {
    /// `inv_freq[i] = 1 / θ^(2i/d)` (f32, as transformers computes it), then scaled as
    /// `config.scaling` says.
    pub fn new(config: &RopeConfig, head_dim: usize) -> Self {
        let base = config.theta as f32;
        let power = |i: usize| base.powf((2 * i) as f32 / head_dim as f32);
        let mut inv_freq: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 / power(i)).collect();
        let (mut long, mut scale) = (None, 1.0f32);
        match &config.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= *factor as f32;
                }
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                // transformers: `1 / (ext_factors * base ** (arange(0, dim, 2) / dim))`, f32.
                let scaled = |factors: &[f64]| -> Vec<f32> {
                    (0..head_dim / 2)
                        .map(|i| 1.0 / (factors[i] as f32 * power(i)))
                        .collect()
                };
                inv_freq = scaled(short_factor);
                long = Some((scaled(long_factor), *original_max_position_embeddings));
                scale = *attention_factor as f32;
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low_freq_factor, high_freq_factor) =
                    (*factor, *low_freq_factor, *high_freq_factor);
                let old = *original_max_position_embeddings as f64;
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
        Self {
            inv_freq,
            long,
            scale,
        }
    }

    /// LongRoPE's original context: a pass whose last position is past it uses the long
    /// factors (`None` without LongRoPE).
    pub fn long_context_from(&self) -> Option<usize> {
        self.long.as_ref().map(|(_, original)| *original)
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
        // transformers picks the set by the pass's largest position (`max(position_ids) + 1`).
        let inv_freq = match &self.long {
            Some((long, original))
                if positions.iter().max().is_some_and(|&p| p + 1 > *original) =>
            {
                long
            }
            _ => &self.inv_freq,
        };
        let (half, scale) = (inv_freq.len(), self.scale);
        let len = positions.len();
        let mut cos = Vec::with_capacity(len * 2 * half);
        let mut sin = Vec::with_capacity(len * 2 * half);
        for &p in positions {
            let row: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                if scale == 1.0 {
                    cos.extend(row.iter().map(|a| a.cos()));
                    sin.extend(row.iter().map(|a| a.sin()));
                } else {
                    cos.extend(row.iter().map(|a| a.cos() * scale));
                    sin.extend(row.iter().map(|a| a.sin() * scale));
                }
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
