//! `with_dropout_row_offset`: a part of a batch (rows `o..` of it) computed alone draws the
//! LoRA dropout masks the whole batch draws on those rows, so data-parallel processes, each
//! computing its share of a micro-batch, train as one process would; without the offset the
//! part draws other masks.

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use qlora_backend::QuantConfig;
use qlora_nn::{InitLoraWeights, LoraAdapter, QLoraLinear, with_dropout_row_offset};
use qlora_testenv::compare::assert_close;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn a_part_of_a_batch_draws_the_whole_batchs_masks_on_its_rows() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let base = LinearConfig::new(32, 24).init(&device);
    let mut layer = QLoraLinear::quantize("proj", base, QuantConfig::qlora()).unwrap();
    // B non-zero, so that the masks reach the output.
    layer.lora.add(
        "default",
        LoraAdapter::new([32, 24], 4, 8.0, 0.3, InitLoraWeights::Random, &device),
    );
    let x = Tensor::<3>::random([1, 9, 32], Distribution::Default, &device);
    let (start, len) = (4, 5);

    device.seed(7);
    let whole = values(layer.forward(x.clone()).narrow(1, start, len));
    let part = x.narrow(1, start, len);
    device.seed(7);
    let shifted = values(with_dropout_row_offset(start, || {
        layer.forward(part.clone())
    }));
    assert_close(
        &shifted,
        &whole,
        1e-6,
        "rows 4..9 alone, shifted, against the whole batch",
    );

    device.seed(7);
    let unshifted = values(layer.forward(part));
    let differ = unshifted
        .iter()
        .zip(&whole)
        .filter(|(a, b)| (*a - *b).abs() > 1e-3)
        .count();
    assert!(
        differ > unshifted.len() / 10,
        "without the offset the part draws other masks ({differ} of {} values differ)",
        unshifted.len()
    );
}
