//! The LLaMA-style model as a [`LoraModel`]: its block linears by HF module path, and the
//! embedding and untied head as the tables `modules_to_save` may train. Every PEFT model-level
//! operation (load and save adapter folders, switch, merge, `merge_and_unload`) comes from the
//! trait. As a [`CausalLm`] it is what the trainer trains: the fused head-and-loss, its
//! embedding's device, and its HF config as the architecture a checkpoint must match.

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor};
use qlora_nn::{
    AdaptedLinear, CausalLm, LoraModel, PaddingFreeBatch, TokenAdapters, put_into_tables,
};

use crate::LlamaForCausalLM;

const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

impl LlamaForCausalLM {
    /// Gives a tied head its own frozen copy of the embedding table (the base's values), so
    /// that one of the two can train alone.
    pub fn untie_head(&mut self) {
        if self.lm_head.is_none() {
            let w = self.model.embed_tokens.weight.val();
            self.lm_head = Some(Param::from_tensor(w).set_require_grad(false));
            self.config.tie_word_embeddings = false;
        }
    }
}

impl LoraModel for LlamaForCausalLM {
    /// A text model read from a multimodal checkpoint sits at `model.language_model` in
    /// transformers' class, which is where PEFT's paths put its modules.
    fn peft_prefix(&self) -> Option<(&'static str, &'static str)> {
        self.multimodal
            .then_some(("model.language_model.", "model."))
    }

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

    /// As the trait's, on a tied model: with `tied` the value goes into the one table both
    /// use; without it the head is untied first (PEFT trains a copy of the table it names in
    /// `modules_to_save`: a saved `lm_head.weight` is the head's alone, a saved
    /// `model.embed_tokens.weight` the embedding's, the head keeping the base's weights).
    fn put_table(&mut self, path: &str, value: Tensor<2>, tied: bool) -> Result<(), String> {
        let want = self.model.embed_tokens.weight.dims();
        let is_table = matches!(path, EMBED | HEAD);
        if is_table && self.lm_head.is_none() && value.dims() != want {
            return Err(format!(
                "saved shape {:?}, the model's is {want:?}",
                value.dims()
            ));
        }
        if is_table && self.lm_head.is_none() {
            if tied {
                self.model.embed_tokens.weight = Param::from_tensor(value).set_require_grad(true);
                return Ok(());
            }
            self.untie_head();
            if path == HEAD {
                self.lm_head = Some(Param::from_tensor(value).set_require_grad(true));
                return Ok(());
            }
        }
        put_into_tables(self, path, value)
    }

    fn tied_tables(&self) -> Option<(String, String)> {
        self.lm_head
            .is_none()
            .then(|| (EMBED.to_string(), HEAD.to_string()))
    }

    /// `model.embed_tokens`, then `lm_head` (the embedding table when tied).
    fn token_tables(&self) -> Vec<(String, Tensor<2>, &TokenAdapters)> {
        let e = self.model.embed_tokens.weight.val();
        let h = self.lm_head.as_ref().map_or_else(|| e.clone(), |w| w.val());
        vec![
            ("model.embed_tokens".into(), e, &self.embed_tokens_rows),
            ("lm_head".into(), h, &self.lm_head_rows),
        ]
    }

    fn token_tables_mut(&mut self) -> Vec<(String, Tensor<2>, &mut TokenAdapters)> {
        let e = self.model.embed_tokens.weight.val();
        let h = self.lm_head.as_ref().map_or_else(|| e.clone(), |w| w.val());
        vec![
            ("model.embed_tokens".into(), e, &mut self.embed_tokens_rows),
            ("lm_head".into(), h, &mut self.lm_head_rows),
        ]
    }
}

impl CausalLm for LlamaForCausalLM {
    /// [`LlamaForCausalLM::loss`]: the head's matmul fused into the cross-entropy.
    fn loss(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1> {
        LlamaForCausalLM::loss(self, input_ids, labels)
    }

    /// [`LlamaForCausalLM::loss_padding_free`].
    fn loss_padding_free(&self, batch: &PaddingFreeBatch) -> Option<Tensor<1>> {
        Some(LlamaForCausalLM::loss_padding_free(self, batch))
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
