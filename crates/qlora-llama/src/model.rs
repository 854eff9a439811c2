//! [`LlamaForCausalLM`]: embedding, decoder layers, final norm and output head, with HF's
//! module names (`model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`).

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::{Int, Tensor};
use qlora_nn::{GradientCheckpointing, PaddingFreeBatch, TokenAdapters};

use crate::{KvCache, LayerType, LlamaConfig, LlamaDecoderLayer, RmsNorm, Rope};

/// The RoPE tables `(cos, sin)` of one pass's positions: the full layers', and the sliding
/// layers' where their RoPE differs (Gemma 3).
struct RopeTables {
    full: (Tensor<2>, Tensor<2>),
    sliding: Option<(Tensor<2>, Tensor<2>)>,
}

impl RopeTables {
    /// The tables of a layer of type `t`.
    fn of(&self, t: LayerType) -> (&Tensor<2>, &Tensor<2>) {
        let (cos, sin) = match (t, &self.sliding) {
            (LayerType::Sliding, Some(s)) => s,
            _ => &self.full,
        };
        (cos, sin)
    }
}

/// `model`: the decoder stack without the head.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// `embed_tokens`, weight `[vocab, hidden]` (frozen).
    pub embed_tokens: Embedding,
    /// `layers`.
    pub layers: Vec<LlamaDecoderLayer>,
    /// The final `norm`.
    pub norm: RmsNorm,
}

/// A LLaMA-family causal language model. Every linear of the blocks is an [`AdaptedLinear`]
/// (frozen float, LoRA over float, or NF4 with or without adapters); embeddings, norms and the
/// head stay float and frozen. One code path for every Burn device.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    /// The decoder.
    pub model: LlamaModel,
    /// `lm_head.weight` `[vocab, hidden]` (PyTorch layout, frozen); `None` when tied to the
    /// embedding.
    pub lm_head: Option<Param<Tensor<2>>>,
    /// Trained rows of `model.embed_tokens` (PEFT's `trainable_token_indices`); on a tied
    /// model the head uses them too unless it has rows of its own.
    pub embed_tokens_rows: TokenAdapters,
    /// Trained rows of the head, apart from the embedding's (PEFT's `{"lm_head": [..]}`).
    pub lm_head_rows: TokenAdapters,
    /// The hyper-parameters.
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub(crate) rope: Rope,
    /// The sliding layers' RoPE where it differs (Gemma 3).
    #[module(skip)]
    rope_sliding: Option<Rope>,
    /// Whether training recomputes each decoder layer in the backward pass
    /// ([`LlamaForCausalLM::with_gradient_checkpointing`]).
    #[module(skip)]
    gradient_checkpointing: GradientCheckpointing,
    /// Loaded from a multimodal checkpoint: PEFT adapters name the linears
    /// `model.language_model.*` ([`LoraModel::peft_prefix`]).
    #[module(skip)]
    pub(crate) multimodal: bool,
}

impl LlamaForCausalLM {
    /// Assembles a model from its parts (the loaders use this).
    pub fn from_parts(config: LlamaConfig, model: LlamaModel, lm_head: Option<Tensor<2>>) -> Self {
        assert_eq!(
            model.layers.len(),
            config.num_hidden_layers,
            "the config has {} layers but {} were given",
            config.num_hidden_layers,
            model.layers.len()
        );
        assert_eq!(
            lm_head.is_none(),
            config.tie_word_embeddings,
            "lm_head must be given exactly when the embeddings are not tied"
        );
        let rope = Rope::new(&config.rope, config.rotary_dim);
        let rope_sliding = config
            .rope_sliding
            .as_ref()
            .map(|r| Rope::new(r, config.rotary_dim));
        Self {
            model,
            lm_head: lm_head.map(|w| Param::from_tensor(w).set_require_grad(false)),
            embed_tokens_rows: TokenAdapters::default(),
            lm_head_rows: TokenAdapters::default(),
            config,
            rope,
            rope_sliding,
            gradient_checkpointing: GradientCheckpointing::Off,
            multimodal: false,
        }
    }

    /// Block-level gradient checkpointing (`transformers`' `gradient_checkpointing_enable()`):
    /// while training, each decoder layer keeps only its input (on its device, or in host
    /// memory with [`GradientCheckpointing::Offload`]) and is recomputed in the backward pass
    /// ([`qlora_nn::checkpoint_with`]); losses and gradients are unchanged, the activations of
    /// all layers but one are not held. Off an autodiff device, and with a KV cache, it changes
    /// nothing.
    pub fn with_gradient_checkpointing(mut self, mode: GradientCheckpointing) -> Self {
        self.gradient_checkpointing = mode;
        self
    }

    /// The mode [`LlamaForCausalLM::with_gradient_checkpointing`] set.
    pub fn gradient_checkpointing(&self) -> GradientCheckpointing {
        self.gradient_checkpointing
    }

    /// One decoder layer while training: checkpointed when that is on.
    fn layer_forward(
        &self,
        layer: &LlamaDecoderLayer,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        segments: Option<&Tensor<2, Int>>,
    ) -> Tensor<3> {
        let mode = self.gradient_checkpointing;
        if !mode.is_on() || !x.is_autodiff() {
            return layer.forward(x, cos, sin, None, segments);
        }
        let (cos, sin, segments) = (cos.clone(), sin.clone(), segments.cloned());
        qlora_nn::checkpoint_with(mode, layer, x, move |layer: &LlamaDecoderLayer, x| {
            // The recomputation's output values are not read (only its gradient flows).
            if qlora_nn::recomputing() {
                layer.forward_output_unused(x, &cos, &sin, segments.as_ref())
            } else {
                layer.forward(x, &cos, &sin, None, segments.as_ref())
            }
        })
    }

    /// The output of the final norm (HF's last hidden state).
    ///
    /// - `input_ids`: `[batch, len]`, positions `cache.len()..cache.len() + len`
    /// - `cache`: extended with this call's keys and values
    /// - returns `[batch, len, hidden]`
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut hidden = self.hidden_states(input_ids, cache, false);
        hidden.pop().expect("final norm output")
    }

    /// Logits of every position.
    ///
    /// - `input_ids`: `[batch, len]`
    /// - returns `[batch, len, vocab]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.logits(self.forward_hidden(input_ids, cache))
    }

    /// The head: `[batch, len, hidden]` → `[batch, len, vocab]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = hidden.dims();
        let w = self.head_base();
        let vocab = w.dims()[0];
        let rows = hidden.reshape([b * t, h]);
        let logits = rows.clone().matmul(w.transpose());
        let logits = match self.head_rows() {
            Some(tokens) => tokens.logits(logits, rows),
            None => logits,
        };
        logits.reshape([b, t, vocab])
    }

    /// The training loss of `input_ids` against `labels` ([`crate::causal_lm_loss_fused`]: the
    /// head's matmul fused into the cross-entropy, no logits held).
    ///
    /// - `input_ids`, `labels`: `[batch, len]`
    /// - returns a scalar `[1]`
    pub fn loss(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1> {
        let hidden = self.forward_hidden(input_ids, None);
        crate::causal_lm_loss_fused(hidden, self.head_weight(), labels)
    }

    /// The head weight `[vocab, hidden]` (the embedding when tied), with its trained rows in
    /// place.
    pub fn head_weight(&self) -> Tensor<2> {
        let w = self.head_base();
        match self.head_rows() {
            Some(tokens) => tokens.apply_table(w),
            None => w,
        }
    }

    /// The head's own weight, without trained rows.
    fn head_base(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(w) => w.val(),
            None => self.model.embed_tokens.weight.val(),
        }
    }

    /// The trained rows the head uses: its own, or on a tied model the embedding's.
    fn head_rows(&self) -> Option<&TokenAdapters> {
        if self.lm_head_rows.any_active() {
            Some(&self.lm_head_rows)
        } else if self.lm_head.is_none() && self.embed_tokens_rows.any_active() {
            Some(&self.embed_tokens_rows)
        } else {
            None
        }
    }

    /// The input embedding of `input_ids` (`[batch, len]` → `[batch, len, hidden]`), with
    /// trained rows in place, scaled by `√hidden` where the family does (Gemma).
    pub fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let x = if self.embed_tokens_rows.any_active() {
            let w = self.model.embed_tokens.weight.val();
            self.embed_tokens_rows.embed(w, input_ids)
        } else {
            self.model.embed_tokens.forward(input_ids)
        };
        if self.config.scale_embeddings {
            // transformers: `embed_scale = hidden_size ** 0.5`, a tensor in the weights' dtype.
            x.mul_scalar((self.config.hidden_size as f64).sqrt() as f32)
        } else {
            x
        }
    }

    /// The RoPE tables of `positions` for every layer type.
    fn rope_tables(&self, positions: &[usize], device: &burn::tensor::Device) -> RopeTables {
        RopeTables {
            full: self.rope.tables_at(positions, device),
            sliding: self
                .rope_sliding
                .as_ref()
                .map(|r| r.tables_at(positions, device)),
        }
    }

    /// HF's `hidden_states`: the embedding output, then the output of every decoder layer but
    /// the last, then the final norm's output (`num_hidden_layers + 1` tensors `[b, len, hidden]`).
    /// With `all = false` only the last is kept.
    pub fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
        all: bool,
    ) -> Vec<Tensor<3>> {
        let [_, t] = input_ids.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let device = input_ids.device();
        let positions: Vec<usize> = (start..start + t).collect();
        let tables = self.rope_tables(&positions, &device);
        let mut x = self.embed(input_ids);
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            if all {
                out.push(x.clone());
            }
            let (cos, sin) = tables.of(self.config.layer_type(i));
            x = match cache.as_deref_mut() {
                Some(c) => layer.forward(x, cos, sin, Some((c, i)), None),
                None => self.layer_forward(layer, x, cos, sin, None),
            };
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        out.push(self.model.norm.forward(x));
        out
    }

    /// The final norm's output of a padding-free batch: its samples concatenated in one row,
    /// each with RoPE positions from 0 and attention inside it, as if each were alone.
    ///
    /// - `batch`: see [`PaddingFreeBatch`]
    /// - returns `[1, total, hidden]`
    pub fn forward_hidden_padding_free(&self, batch: &PaddingFreeBatch) -> Tensor<3> {
        let device = batch.input_ids.device();
        let tables = self.rope_tables(&batch.position_ids, &device);
        let mut x = self.embed(batch.input_ids.clone());
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (cos, sin) = tables.of(self.config.layer_type(i));
            x = self.layer_forward(layer, x, cos, sin, Some(&batch.seq_starts));
        }
        self.model.norm.forward(x)
    }

    /// [`LlamaForCausalLM::loss`] of a padding-free batch: the same mean over the same
    /// targets as the samples padded, with no padding computed.
    pub fn loss_padding_free(&self, batch: &PaddingFreeBatch) -> Tensor<1> {
        let hidden = self.forward_hidden_padding_free(batch);
        crate::causal_lm_loss_fused(hidden, self.head_weight(), batch.labels.clone())
    }

    /// A new, empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }
}
