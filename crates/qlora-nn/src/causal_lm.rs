//! [`CausalLm`]: what a training loop needs of a causal language model besides its adapters:
//! the loss of a batch, the device it lives on and the ids it embeds.
//!
//! It sits here, beside [`LoraModel`], rather than in the trainer's crate, so that a model crate
//! implements it for its own types (Rust's orphan rule) without depending on the trainer, and
//! the trainer stays free of any model family's names. The label convention is transformers'
//! (`AutoModelForCausalLM(input_ids, labels=...)`): labels are aligned with the inputs and
//! shifted inside the loss; [`IGNORE_INDEX`] marks positions left out (prompt, padding).

use burn::tensor::{Device, Int, Tensor};

use crate::LoraModel;

/// Label value that marks a position as not trained on (PyTorch's `ignore_index`, which
/// transformers and TRL use for prompt tokens and padding).
pub const IGNORE_INDEX: i64 = -100;

/// A causal language model with LoRA adapters, as a trainer sees it.
///
/// ```
/// use burn::module::Module;
/// use burn::tensor::activation::log_softmax;
/// use burn::tensor::{Device, Int, Tensor};
/// use qlora_nn::{AdaptedLinear, CausalLm, IGNORE_INDEX, LoraModel};
///
/// #[derive(Module, Debug)]
/// struct Bigram {
///     embed: burn::nn::Embedding,
///     head: AdaptedLinear,
/// }
///
/// impl LoraModel for Bigram {
///     fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
///         vec![("head".into(), &self.head)]
///     }
///     fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
///         vec![("head".into(), &mut self.head)]
///     }
/// }
///
/// impl CausalLm for Bigram {
///     fn loss(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1> {
///         let [b, t] = input_ids.dims();
///         let logits = self.head.forward(self.embed.forward(input_ids));
///         let v = logits.dims()[2];
///         // Position t predicts token t + 1.
///         let logits = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
///         let targets = labels.narrow(1, 1, t - 1).reshape([b * (t - 1), 1]);
///         let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
///         let safe = targets.mask_fill(keep.clone().bool_not(), 0);
///         let logp = log_softmax(logits, 1).gather(1, safe);
///         let keep = keep.float();
///         -(logp * keep.clone()).sum() / keep.sum()
///     }
///     fn device(&self) -> Device {
///         self.embed.weight.device()
///     }
///     fn vocab_size(&self) -> usize {
///         self.embed.weight.dims()[0]
///     }
///     fn architecture(&self) -> String {
///         format!("bigram:{:?}", self.embed.weight.dims())
///     }
/// }
/// ```
pub trait CausalLm: LoraModel {
    /// The mean next-token cross-entropy over the labelled positions: position `t` predicts
    /// `labels[t + 1]`; labels equal to [`IGNORE_INDEX`] are left out.
    ///
    /// - `input_ids`, `labels`: `[batch, len]`
    /// - returns a scalar `[1]`
    fn loss(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1>;

    /// The device the model's parameters live on (an autodiff device while training).
    fn device(&self) -> Device;

    /// How many token ids the model embeds: an id at or past it has no embedding.
    fn vocab_size(&self) -> usize;

    /// What identifies the architecture and its sizes (for example its config as JSON): a
    /// checkpoint made with another is refused on resume.
    fn architecture(&self) -> String;
}
