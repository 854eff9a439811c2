//! The causal language-modelling loss as transformers computes it: position `t` predicts
//! token `t + 1`; labels equal to [`IGNORE_INDEX`] (prompt tokens, padding) are left out; the
//! loss is the mean cross-entropy over the remaining targets.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

pub use qlora_nn::IGNORE_INDEX;

/// Mean next-token cross-entropy.
///
/// - `logits`: `[batch, len, vocab]`
/// - `labels`: `[batch, len]` token ids, [`IGNORE_INDEX`] where no loss is wanted
/// - returns a scalar `[1]` (NaN if every target is ignored, as in PyTorch)
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    assert_eq!(
        labels.dims(),
        [b, t],
        "labels must be [batch, len] = {:?}, found {:?}",
        [b, t],
        labels.dims()
    );
    let logits = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]);
    let targets = labels.narrow(1, 1, t - 1).reshape([b * (t - 1), 1]);
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
    let safe = targets.mask_fill(keep.clone().bool_not(), 0);
    let logp = log_softmax(logits, 1).gather(1, safe);
    let keep = keep.float();
    let n = keep.clone().sum();
    (logp * keep).sum().neg() / n
}

/// [`causal_lm_loss`] from the final hidden states and the head weight, with the head's matmul
/// fused into the cross-entropy ([`qlora_fused::linear_cross_entropy`]): the
/// `[batch, len, vocab]` logits are never held, in the forward pass or for the backward one.
/// Only the positions that have a label go through the head, forward and backward (as TRL's
/// `chunked_nll` does): a chat batch trains on its replies, and its prompts and padding cost
/// no head work. Same value and gradients as `causal_lm_loss(logits(hidden), labels)` up to
/// f32 rounding. Finding the labelled rows reads the labels' mask back to the host.
///
/// - `hidden`: `[batch, len, hidden]` (the output of the final norm)
/// - `head`: `[vocab, hidden]`
/// - `labels`: `[batch, len]`, [`IGNORE_INDEX`] where no loss is wanted
/// - returns a scalar `[1]` (NaN if every target is ignored, as in PyTorch)
pub fn causal_lm_loss_fused(
    hidden: Tensor<3>,
    head: Tensor<2>,
    labels: Tensor<2, Int>,
) -> Tensor<1> {
    let [b, t, h] = hidden.dims();
    assert_eq!(
        labels.dims(),
        [b, t],
        "labels must be [batch, len] = {:?}, found {:?}",
        [b, t],
        labels.dims()
    );
    let n = b * (t - 1);
    let rows = hidden.narrow(1, 0, t - 1).reshape([n, h]);
    let targets = labels.narrow(1, 1, t - 1).reshape([n]);
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
    let labelled = keep.clone().argwhere();
    let k = labelled.dims()[0];
    if k == 0 || k == n {
        // Nothing to gather: every row (or none, giving PyTorch's NaN) as it is.
        let safe = targets.mask_fill(keep.clone().bool_not(), 0);
        let weights = keep.float();
        let count = weights.clone().sum();
        return qlora_fused::linear_cross_entropy(rows, head, safe, weights).sum() / count;
    }
    let idx = labelled.reshape([k]);
    let rows = rows.select(0, idx.clone());
    let targets = targets.select(0, idx);
    let weights = Tensor::<1>::ones([k], &rows.device());
    qlora_fused::linear_cross_entropy(rows, head, targets, weights).sum() / k as f64
}
