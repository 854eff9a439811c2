//! [`LlamaConfig`] written back as HF `config.json` text: the fields transformers 5 reads and,
//! beside them, those transformers 4 reads, with each family's own (Qwen's windows, Phi-3's
//! partial rotary factor and LongRoPE context, Gemma 3's per-type RoPE).

use serde_json::{Value, json};

use crate::config_gemma;
use crate::layer_types::LayerType;
use crate::{LlamaConfig, ModelType, RopeScaling};

impl LlamaConfig {
    /// The config as HF `config.json` text, in the fields transformers 5 reads
    /// (`rope_parameters`, `dtype`) and, beside them, those transformers 4 reads (`rope_theta`,
    /// `rope_scaling`, `torch_dtype`), so that both versions load the same model.
    pub fn to_hf_json(&self) -> String {
        let rope = self
            .rope
            .to_hf_value(self.rotary_dim as f64 / self.head_dim as f64);
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": [self.model_type.architecture()],
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "dtype": "float32",
            "torch_dtype": "float32",
            "eos_token_id": eos,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": self.model_type.as_str(),
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pad_token_id": self.pad_token_id,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "rope_scaling": self.rope.to_hf_scaling_value(),
            "rope_theta": self.rope.theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        });
        let extra = match self.model_type {
            ModelType::Llama => json!({
                "attention_bias": self.attention_bias,
                "mlp_bias": self.mlp_bias,
                "pretraining_tp": 1,
            }),
            ModelType::Qwen2 => self.qwen_window_fields(),
            ModelType::Mistral => json!({ "sliding_window": self.sliding_window }),
            ModelType::Phi3 => {
                let mut v = json!({
                    "sliding_window": self.sliding_window,
                    "partial_rotary_factor": self.rotary_dim as f64 / self.head_dim as f64,
                });
                // transformers reads Phi-3's top-level context before the RoPE's own.
                if let RopeScaling::LongRope {
                    original_max_position_embeddings,
                    ..
                } = &self.rope.scaling
                {
                    v["original_max_position_embeddings"] = json!(original_max_position_embeddings);
                }
                v
            }
            ModelType::Qwen3 => {
                let mut v = self.qwen_window_fields();
                v["attention_bias"] = json!(self.attention_bias);
                v
            }
            ModelType::Gemma3 => config_gemma::hf_fields(self),
        };
        let (Value::Object(all), Value::Object(extra)) = (&mut v, extra) else {
            unreachable!("JSON objects")
        };
        if self.model_type == ModelType::Gemma3 {
            // Gemma 3 reads `hidden_activation` (its RoPE fields are `hf_fields`').
            all.remove("hidden_act");
        }
        all.extend(extra);
        all.sort_keys();
        serde_json::to_string_pretty(&v).expect("JSON value") + "\n"
    }

    /// Qwen's window fields: `use_sliding_window`, `sliding_window`, the `layer_types` list
    /// (transformers 5 reads it) and `max_window_layers` (the first sliding layer, which is
    /// what transformers 4 reads).
    fn qwen_window_fields(&self) -> Value {
        let n = self.num_hidden_layers;
        let types: Vec<LayerType> = (0..n).map(|i| self.layer_type(i)).collect();
        let first = types
            .iter()
            .position(|t| *t == LayerType::Sliding)
            .unwrap_or(n);
        json!({
            "use_sliding_window": self.sliding_window.is_some(),
            "sliding_window": self.sliding_window,
            "max_window_layers": first,
            "layer_types": types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        })
    }
}
