//! [`CausalLm`]: what a training loop needs of a causal language model besides its adapters:
//! the loss of a batch, the device it lives on and the ids it embeds.
//!
//! It sits here, beside [`LoraModel`], rather than in the trainer's crate, so that a model crate
//! implements it for its own types (Rust's orphan rule) without depending on the trainer, and
//! the trainer stays free of any model family's names. The label convention is transformers'
//! (`AutoModelForCausalLM(input_ids, labels=...)`): labels are aligned with the inputs and
//! shifted inside the loss; [`IGNORE_INDEX`] marks positions left out (prompt, padding).

use burn::tensor::{Device, Int, Tensor, TensorData};

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

    /// The loss of a padding-free batch (TRL's `padding_free`): the same mean over the same
    /// targets as [`CausalLm::loss`] of the samples padded into a batch, computed on their
    /// concatenation (no padding, positions restarting per sample, attention inside each
    /// sample). `None` (the default) where the model cannot: the trainer then pads.
    fn loss_padding_free(&self, batch: &PaddingFreeBatch) -> Option<Tensor<1>> {
        let _ = batch;
        None
    }

    /// The device the model's parameters live on (an autodiff device while training).
    fn device(&self) -> Device;

    /// How many token ids the model embeds: an id at or past it has no embedding.
    fn vocab_size(&self) -> usize;

    /// What identifies the architecture and its sizes (for example its config as JSON): a
    /// checkpoint made with another is refused on resume.
    fn architecture(&self) -> String;
}

/// A padding-free batch (TRL's `padding_free`, FlashAttention's variable-length batches): the
/// samples of a batch concatenated into one row of `total` tokens, with no padding. Positions
/// restart at 0 with each sample and a model keeps each sample's attention inside it, so every
/// sample is computed as if it were alone; the first label of each sample is
/// [`IGNORE_INDEX`] (TRL's `labels[position_ids == 0] = -100`): it would be predicted from the
/// previous sample's last token. The targets are those of the padded batch, so the mean loss
/// is the same.
#[derive(Debug, Clone)]
pub struct PaddingFreeBatch {
    /// `[1, total]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[1, total]` labels.
    pub labels: Tensor<2, Int>,
    /// Each token's position within its sample (`total` values; for RoPE).
    pub position_ids: Vec<usize>,
    /// `[1, total]`: for each token, the row position of its sample's first token.
    pub seq_starts: Tensor<2, Int>,
    /// The samples' lengths, in row order.
    pub lengths: Vec<usize>,
}

impl PaddingFreeBatch {
    /// The batch of `samples` (each its token ids and aligned labels, same length, at least
    /// one token) on `device`.
    ///
    /// # Panics
    /// If a sample is empty or its ids and labels differ in length.
    pub fn new(samples: &[(&[u32], &[i64])], device: &Device) -> Self {
        let total: usize = samples.iter().map(|(ids, _)| ids.len()).sum();
        let (mut ids, mut labels) = (Vec::with_capacity(total), Vec::with_capacity(total));
        let (mut positions, mut starts) = (Vec::with_capacity(total), Vec::with_capacity(total));
        let mut lengths = Vec::with_capacity(samples.len());
        for (s_ids, s_labels) in samples {
            assert!(
                !s_ids.is_empty(),
                "a padding-free batch needs non-empty samples"
            );
            assert_eq!(
                s_ids.len(),
                s_labels.len(),
                "ids and labels differ in length"
            );
            let at = ids.len();
            ids.extend(s_ids.iter().map(|&x| x as i64));
            labels.push(IGNORE_INDEX);
            labels.extend_from_slice(&s_labels[1..]);
            positions.extend(0..s_ids.len());
            starts.extend(std::iter::repeat_n(at as i64, s_ids.len()));
            lengths.push(s_ids.len());
        }
        let row = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [1, total]), device);
        Self {
            input_ids: row(ids),
            labels: row(labels),
            position_ids: positions,
            seq_starts: row(starts),
            lengths,
        }
    }
}
