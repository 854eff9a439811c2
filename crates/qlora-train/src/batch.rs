//! Batches: padded ([`collate`]) or padding-free, their mean loss ([`batch_loss`]), and the
//! held-out loss the trainer reports.

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_nn::{CausalLm, IGNORE_INDEX, PaddingFreeBatch};

use crate::Sample;

/// Pads samples to the longest: ids with `pad`, labels with [`IGNORE_INDEX`].
pub fn collate(
    samples: &[&Sample],
    pad: u32,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, usize) {
    let t = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(samples.len() * t);
    let mut labels = Vec::with_capacity(samples.len() * t);
    let mut tokens = 0;
    for s in samples {
        tokens += s.input_ids.len();
        ids.extend(s.input_ids.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad as i64, t - s.input_ids.len()));
        labels.extend(&s.labels);
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - s.labels.len()));
    }
    let b = samples.len();
    (
        Tensor::from_data(TensorData::new(ids, [b, t]), device),
        Tensor::from_data(TensorData::new(labels, [b, t]), device),
        tokens,
    )
}

/// The mean loss of `samples` on `model`: padding-free ([`PaddingFreeBatch`], the samples
/// [`crate::pack`] joined kept apart) when `padding_free` is set, the samples differ in length
/// or are packed, and the model can; otherwise padded to the longest with `pad` ([`collate`]),
/// packed samples then seeing each other, as plain packing does.
pub fn batch_loss<M: CausalLm>(
    model: &M,
    samples: &[&Sample],
    pad: u32,
    padding_free: bool,
) -> Tensor<1> {
    let device = model.device();
    let ragged = samples
        .windows(2)
        .any(|w| w[0].input_ids.len() != w[1].input_ids.len());
    let packed = samples.iter().any(|s| !s.seq_lengths.is_empty());
    if padding_free && (ragged || packed) {
        let parts: Vec<(&[u32], &[i64])> = samples.iter().flat_map(|s| s.sequences()).collect();
        if let Some(loss) = model.loss_padding_free(&PaddingFreeBatch::new(&parts, &device)) {
            return loss;
        }
    }
    let (ids, labels, _) = collate(samples, pad, &device);
    model.loss(ids, labels)
}

/// Mean loss per trained token of `model` over `samples` (`batch` at a time, padding-free where
/// the model can, else padded with `pad`), with dropout off and no gradients: the held-out loss
/// the trainer reports.
pub fn held_out_loss<M: CausalLm>(model: &M, samples: &[Sample], pad: u32, batch: usize) -> f64 {
    let (total, count) = held_out_sums(model, samples, pad, batch, |_| true);
    total / count.max(1.0)
}

/// The summed loss and the trained tokens of the chunks of `batch` samples whose index `keep`
/// takes (the sums [`held_out_loss`] divides; each process of a job takes its own chunks).
pub(crate) fn held_out_sums<M: CausalLm>(
    model: &M,
    samples: &[Sample],
    pad: u32,
    batch: usize,
    keep: impl Fn(usize) -> bool,
) -> (f64, f64) {
    let model = model.valid();
    let (mut total, mut count) = (0.0, 0usize);
    for (i, chunk) in samples.chunks(batch.max(1)).enumerate() {
        if !keep(i) {
            continue;
        }
        let refs: Vec<&Sample> = chunk.iter().collect();
        let n: usize = chunk.iter().map(Sample::trained_tokens).sum();
        total += scalar(batch_loss(&model, &refs, pad, true)) * n as f64;
        count += n;
    }
    (total, count as f64)
}

pub(crate) fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("f64")[0]
}
