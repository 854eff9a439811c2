//! Thirty QLoRA training steps on the golden tiny LLaMA against PyTorch + PEFT + bitsandbytes
//! (`tests/fixtures/qlora_curve_30.safetensors`, made by
//! `tests/fixtures/scripts/make_qlora_curve.py`): the bnb NF4 + double-quant checkpoint read as
//! it is, the golden PEFT adapter as the fixed start, AdamW (lr 1e-3, no weight decay), three
//! batches cycled. Every step's loss must match PEFT's within 1.2e-5 relative (10x the
//! worst step of the recorded run, 1.2e-6).

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::causal_lm_loss;

#[path = "support/curve.rs"]
mod curve;

#[test]
fn thirty_qlora_steps_follow_peft_loss_curve() {
    let (ids, labels, want) = curve::curve();
    let steps = want.len();
    let per = ids.len() / steps;

    let device = Device::flex().autodiff();
    let (mut model, mut optim) = curve::start(&device);
    let mut worst = 0f32;
    for (step, want) in want.iter().enumerate() {
        let slice = |v: &[i64]| {
            Tensor::<2, Int>::from_data(
                TensorData::new(v[step * per..(step + 1) * per].to_vec(), [2, per / 2]),
                &device,
            )
        };
        let loss = causal_lm_loss(model.forward(slice(&ids), None), slice(&labels));
        let got: f32 = loss.clone().into_scalar();
        let rel = (got - want).abs() / want.abs();
        assert!(
            rel < 1.2e-5,
            "step {}: loss {got} vs PEFT {want} ({rel:.2e} relative)",
            step + 1
        );
        worst = worst.max(rel);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    assert!(want[steps - 1] < 0.85 * want[0], "the curve falls");
    println!("30 steps: worst relative loss difference to PEFT {worst:.2e}");
}
