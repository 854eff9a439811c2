//! The model shapes, adapters and tokens the training-step benchmarks share
//! (`benches/train_step.rs` on the CPU, the GPU check's steps in `examples/gpu_check`), so that
//! both measure the same step.

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_qlora::llama::LlamaConfig;
use burn_qlora::nn::{LoraConfig, ModuleSelector};
use burn_qlora::train::splitmix;

/// A LLaMA shape: the decoder's sizes and its vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub vocab: usize,
    pub tied: bool,
}

/// The peer benchmark's model (`benches/peer`): 19.5 M parameters.
pub const PEER: Shape = Shape {
    hidden: 256,
    ffn: 688,
    heads: 8,
    kv_heads: 8,
    layers: 4,
    vocab: 32000,
    tied: false,
};

/// A LLaMA-7B-shaped layer stack (2 layers unless said otherwise).
pub const LLAMA7B: Shape = Shape {
    hidden: 4096,
    ffn: 11008,
    heads: 32,
    kv_heads: 32,
    layers: 2,
    vocab: 32000,
    tied: false,
};

/// The default model's (SmolLM2-135M-Instruct): 9 heads over 3 kv heads, 30 layers, tied head.
pub const SMOLLM2: Shape = Shape {
    hidden: 576,
    ffn: 1536,
    heads: 9,
    kv_heads: 3,
    layers: 30,
    vocab: 49152,
    tied: true,
};

impl Shape {
    /// The shape by the name `--shape` takes.
    pub fn named(name: &str) -> Option<Shape> {
        match name {
            "peer" => Some(PEER),
            "llama7b" => Some(LLAMA7B),
            "smollm2" => Some(SMOLLM2),
            _ => None,
        }
    }

    /// Its config for sequences of up to `seq` tokens.
    pub fn config(&self, seq: usize) -> LlamaConfig {
        LlamaConfig::from_json_str(
            &serde_json::json!({
                "model_type": "llama", "vocab_size": self.vocab, "hidden_size": self.hidden,
                "intermediate_size": self.ffn, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "max_position_embeddings": seq.max(512), "tie_word_embeddings": self.tied,
                "rms_norm_eps": 1e-6, "hidden_act": "silu", "rope_theta": 10000.0
            })
            .to_string(),
            "<bench config>",
        )
        .expect("a bench shape's config is valid")
    }
}

/// LoRA r16 α32 on the seven linears of every block, no dropout.
pub fn lora_seven_linears() -> LoraConfig {
    LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        lora_dropout: 0.0,
        target_modules: Some(ModuleSelector::List(
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        )),
        ..LoraConfig::default()
    }
}

/// `[batch, seq]` token ids below `vocab`, the same for the same arguments (labels = inputs).
pub fn random_ids(batch: usize, seq: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    let mut s = 0u64;
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| (splitmix(&mut s) % vocab as u64) as i64)
        .collect();
    Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), device)
}
