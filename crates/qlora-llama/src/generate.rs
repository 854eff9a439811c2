//! Text generation with a [`KvCache`]: the prompt is run once, then one token per step.
//! Greedy decoding, or sampling with temperature, top-k and top-p (nucleus, Holtzman et al.
//! 2019) from a seeded generator, so a seed gives the same text every run.

use burn::tensor::{Int, Tensor, TensorData};

use crate::{LlamaError, LlamaForCausalLM};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample from the softmax of `logits / temperature`, restricted to the `top_k` most likely
    /// tokens (0: all) and to the smallest set whose probability reaches `top_p`.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Keep this many most likely tokens (0 = no limit).
        top_k: usize,
        /// Nucleus mass in (0, 1].
        top_p: f32,
        /// Seed of the generator.
        seed: u64,
    },
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to produce.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Tokens that end generation (not included in the output).
    pub stop_tokens: Vec<u32>,
}

/// SplitMix64 (Steele et al. 2014): small, seeded, and the same on every platform.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks the next token from one row of logits.
fn choose(logits: &[f32], sampling: Sampling, rng: &mut SplitMix64) -> u32 {
    let Sampling::Sample {
        temperature,
        top_k,
        top_p,
        ..
    } = sampling
    else {
        return argmax(logits);
    };
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if top_k > 0 {
        idx.truncate(top_k);
    }
    let max = logits[idx[0] as usize];
    let mut probs: Vec<f32> = idx
        .iter()
        .map(|&i| ((logits[i as usize] - max) / temperature).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut mass = 0.0;
    let mut keep = probs.len();
    for (n, p) in probs.iter().enumerate() {
        mass += p;
        if mass >= top_p {
            keep = n + 1;
            break;
        }
    }
    let kept: f32 = probs[..keep].iter().sum();
    let mut u = rng.next_f32() * kept;
    for (n, p) in probs[..keep].iter().enumerate() {
        if u < *p {
            return idx[n];
        }
        u -= p;
    }
    idx[keep - 1]
}

impl LlamaForCausalLM {
    /// Checks that every id of `ids` has an embedding in this model; `what` names their source
    /// in the error. Run it on ids from a tokenizer before [`LlamaForCausalLM::generate`] or a
    /// forward pass, which index the embedding table and panic past its end.
    pub fn check_token_ids(&self, ids: &[u32], what: &str) -> Result<(), LlamaError> {
        let vocab = self.config.vocab_size;
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(&id) => Err(LlamaError::TokenId {
                what: what.to_string(),
                id,
                vocab,
            }),
            None => Ok(()),
        }
    }

    /// Continues `prompt` (token ids, batch of one) and returns the new tokens.
    /// `on_token` sees each token as it is produced (to stream it) and can stop generation by
    /// returning `false`.
    ///
    /// # Panics
    /// If `prompt` is empty.
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Vec<u32> {
        assert!(
            !prompt.is_empty(),
            "generate needs at least one prompt token"
        );
        let device = self.model.embed_tokens.weight.device();
        let mut rng = SplitMix64(match config.sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        });
        let mut cache = self.new_cache();
        let mut out = Vec::new();
        let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
        let mut all = input.clone();
        let long_from = self.rope.long_context_from();
        while out.len() < config.max_new_tokens {
            // LongRoPE: once the sequence passes the original context, the cached keys (rotated
            // with the short factors) are recomputed with the long ones, once, as transformers'
            // Phi-3 generation does.
            if let Some(original) = long_from
                && !cache.is_empty()
                && cache.len() <= original
                && cache.len() + input.len() > original
            {
                cache = self.new_cache();
                input = all.clone();
            }
            let n = input.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(input, [1, n]), &device);
            let hidden = self
                .forward_hidden(ids, Some(&mut cache))
                .narrow(1, n - 1, 1);
            let logits = self
                .logits(hidden)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 logits");
            let next = choose(&logits, config.sampling, &mut rng);
            if config.stop_tokens.contains(&next) {
                break;
            }
            out.push(next);
            all.push(next as i64);
            if !on_token(next) {
                break;
            }
            input = vec![next as i64];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_is_seeded() {
        let logits = [0.1, 2.0, 0.5, 1.9];
        let s = |k, p, seed| Sampling::Sample {
            temperature: 1.0,
            top_k: k,
            top_p: p,
            seed,
        };
        let mut rng = SplitMix64(7);
        for _ in 0..20 {
            assert_eq!(choose(&logits, s(1, 1.0, 7), &mut rng), 1);
        }
        let draw = |seed| {
            let mut rng = SplitMix64(seed);
            (0..50)
                .map(|_| choose(&logits, s(0, 1.0, seed), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let d = draw(3);
        // Every token has non-zero probability: over 50 draws the two likely ones appear.
        assert!(d.contains(&1) && d.contains(&3));
        // top_p small keeps only the most likely token.
        let mut rng = SplitMix64(1);
        for _ in 0..20 {
            assert_eq!(choose(&logits, s(0, 0.1, 1), &mut rng), 1);
        }
    }
}
