//! The golden families' fixtures (`tests/fixtures/golden/families/<family>`), shared by the
//! family tests through `#[path]`: the folders, the reference tensors, loading and greedy ids.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{GenerationConfig, LlamaForCausalLM, Sampling};
use qlora_nf4::QuantConfig;
use qlora_nn::LoraApplier;
use safetensors::SafeTensors;

pub fn family(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/families")
        .join(name)
}

/// `reference.safetensors` of a family.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Self {
        Self {
            bytes: std::fs::read(family(name).join("reference.safetensors")).unwrap(),
        }
    }
    pub fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    pub fn f32s(&self, key: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    pub fn i64s(&self, key: &str) -> (Vec<i64>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        let v = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }
    pub fn input_ids(&self, device: &Device) -> Tensor<2, Int> {
        let (ids, shape) = self.i64s("input_ids");
        Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
    }
}

pub fn load(dir: PathBuf, quant: Option<QuantConfig>, device: &Device) -> LlamaForCausalLM {
    LlamaForCausalLM::load_hf(&dir, &LoraApplier::base_only(quant, device))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// 8 greedy tokens from the reference's prompt, with the KV cache, no stop token.
pub fn greedy(model: &LlamaForCausalLM, r: &Reference) -> Vec<i64> {
    greedy_after(model, &r.i64s("prompt").0)
}

/// 8 greedy tokens after `prompt`, with the KV cache, no stop token (as the references'
/// `generate(max_new_tokens=8, do_sample=False, eos_token_id=None)`).
pub fn greedy_after(model: &LlamaForCausalLM, prompt: &[i64]) -> Vec<i64> {
    let prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let config = GenerationConfig {
        max_new_tokens: 8,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
    };
    model
        .generate(&prompt, &config, |_| true)
        .into_iter()
        .map(i64::from)
        .collect()
}
