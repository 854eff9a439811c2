//! [`LlamaConfig::init`]: a model of a config's shape with random weights, for benchmarks and
//! tests that need a model of a given size but no checkpoint of it.
//!
//! Weights are drawn as transformers' `LlamaPreTrainedModel._init_weights` does: every matrix
//! from N(0, 0.02²) (`initializer_range`), biases 0, norms 1. The values are a function of
//! the tensor's HF name and the seed alone (SplitMix64 into Box-Muller, on the host), so two
//! inits of one config are the same model on every device and in every process, and the
//! weights go through the same loading path as a checkpoint's (quantized to NF4 one tensor at
//! a time where the applier says so).

use std::collections::BTreeMap;

use crate::{HostFloats, HostTensor, LlamaConfig, LlamaError, LlamaForCausalLM, WeightSource};
use qlora_nn::LoraApplier;

/// transformers' default `initializer_range`.
const INITIALIZER_RANGE: f64 = 0.02;

/// What a weight is initialized to.
#[derive(Clone, Copy)]
enum Init {
    Normal,
    Zeros,
    Ones,
}

/// Every tensor of a config's model, by HF name: shape and init.
struct RandomWeights {
    seed: u64,
    tensors: BTreeMap<String, (Vec<usize>, Init)>,
}

impl RandomWeights {
    fn new(c: &LlamaConfig, seed: u64) -> Self {
        let (h, v) = (c.hidden_size, c.vocab_size);
        let mut tensors = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>, init: Init| {
            tensors.insert(name, (shape, init));
        };
        add("model.embed_tokens.weight".into(), vec![v, h], Init::Normal);
        add("model.norm.weight".into(), vec![h], Init::Ones);
        if !c.tie_word_embeddings {
            add("lm_head.weight".into(), vec![v, h], Init::Normal);
        }
        for i in 0..c.num_hidden_layers {
            for (path, [out, inp], bias) in c.layer_linears(i) {
                add(format!("{path}.weight"), vec![out, inp], Init::Normal);
                if bias {
                    add(format!("{path}.bias"), vec![out], Init::Zeros);
                }
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                add(
                    format!("model.layers.{i}.{norm}.weight"),
                    vec![h],
                    Init::Ones,
                );
            }
            if c.qk_norm {
                for norm in ["q_norm", "k_norm"] {
                    add(
                        format!("model.layers.{i}.self_attn.{norm}.weight"),
                        vec![c.head_dim],
                        Init::Ones,
                    );
                }
            }
        }
        Self { seed, tensors }
    }
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl WeightSource for RandomWeights {
    fn describe(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn read_float(&self, name: &str) -> Result<HostTensor, LlamaError> {
        let Some((shape, init)) = self.tensors.get(name) else {
            return Err(LlamaError::MissingTensor {
                path: self.describe(),
                tensor: name.into(),
            });
        };
        let n: usize = shape.iter().product();
        let values = match init {
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
            Init::Normal => {
                // FNV-1a of the name, mixed with the seed: each tensor its own stream.
                let mut s = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                }) ^ self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (0..n)
                    .map(|_| {
                        let u1 = ((splitmix(&mut s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                        let u2 = (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        (INITIALIZER_RANGE * z) as f32
                    })
                    .collect()
            }
        };
        Ok(HostTensor {
            shape: shape.clone(),
            values: HostFloats::F32(values),
        })
    }
}

impl LlamaConfig {
    /// A model of this config with random weights (see the module docs): the same for the
    /// same `seed`, each block linear made by `applier` (frozen float, LoRA, NF4 or QLoRA) on
    /// its device, as [`LlamaForCausalLM::load`] makes them from a checkpoint.
    ///
    /// Errors if the applier cannot make a layer (a LoRA config that adapts nothing, a shape
    /// NF4 cannot take).
    pub fn init(&self, applier: &LoraApplier, seed: u64) -> Result<LlamaForCausalLM, LlamaError> {
        LlamaForCausalLM::from_source(self, &RandomWeights::new(self, seed), applier)
    }
}
