//! The LLaMA-style model as a [`LoraModel`]: its block linears by HF module path, and the
//! embedding and untied head as the tables `modules_to_save` may train. Every PEFT model-level
//! operation (load and save adapter folders, switch, merge, `merge_and_unload`) comes from the
//! trait. As a [`CausalLm`] it is what the trainer trains: the fused head-and-loss, its
//! embedding's device, and its HF config as the architecture a checkpoint must match.

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor};
use qlora_nn::{AdaptedLinear, CausalLm, LoraModel, put_into_tables};

use crate::LlamaForCausalLM;

impl LoraModel for LlamaForCausalLM {
    /// Every linear of the blocks with its HF path (`model.layers.N.self_attn.q_proj`, ...).
    fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
        let mut v = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            let at = |part: &str, n: &str| format!("model.layers.{i}.{part}.{n}");
            v.extend(
                l.self_attn
                    .linears()
                    .into_iter()
                    .map(|(n, x)| (at("self_attn", n), x)),
            );
            v.extend(l.mlp.linears().into_iter().map(|(n, x)| (at("mlp", n), x)));
        }
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
        let mut v = Vec::new();
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let at = |part: &str, n: &str| format!("model.layers.{i}.{part}.{n}");
            let (attn, mlp) = (&mut l.self_attn, &mut l.mlp);
            v.extend(
                attn.linears_mut()
                    .into_iter()
                    .map(|(n, x)| (at("self_attn", n), x)),
            );
            v.extend(
                mlp.linears_mut()
                    .into_iter()
                    .map(|(n, x)| (at("mlp", n), x)),
            );
        }
        v
    }

    /// `model.embed_tokens.weight`, and `lm_head.weight` when the head is not tied.
    fn tables(&self) -> Vec<(String, &Param<Tensor<2>>)> {
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            &self.model.embed_tokens.weight,
        )];
        v.extend(
            self.lm_head
                .as_ref()
                .map(|w| ("lm_head.weight".to_string(), w)),
        );
        v
    }

    fn tables_mut(&mut self) -> Vec<(String, &mut Param<Tensor<2>>)> {
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            &mut self.model.embed_tokens.weight,
        )];
        v.extend(
            self.lm_head
                .as_mut()
                .map(|w| ("lm_head.weight".to_string(), w)),
        );
        v
    }

    /// As the trait's, and a saved `lm_head.weight` on a tied model unties the head (PEFT's
    /// `modules_to_save = ["lm_head"]` on a model with tied embeddings).
    fn put_table(&mut self, path: &str, value: Tensor<2>) -> Result<(), String> {
        if path == "lm_head.weight" && self.lm_head.is_none() {
            let want = self.model.embed_tokens.weight.dims();
            if value.dims() != want {
                return Err(format!(
                    "saved shape {:?}, the model's is {want:?}",
                    value.dims()
                ));
            }
            self.config.tie_word_embeddings = false;
            self.lm_head = Some(Param::from_tensor(value).set_require_grad(true));
            return Ok(());
        }
        put_into_tables(self, path, value)
    }
}

impl CausalLm for LlamaForCausalLM {
    /// [`LlamaForCausalLM::loss`]: the head's matmul fused into the cross-entropy.
    fn loss(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1> {
        LlamaForCausalLM::loss(self, input_ids, labels)
    }

    fn device(&self) -> Device {
        self.model.embed_tokens.weight.device()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The HF `config.json` the model was built from, without white space.
    fn architecture(&self) -> String {
        self.config.to_hf_json().replace(char::is_whitespace, "")
    }
}
