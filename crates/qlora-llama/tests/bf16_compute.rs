//! QLoRA training with bf16 compute (`qlora_cpu_gemm::set_matmul_tier`) against the same job
//! in f32 on the golden tiny LLaMA (bnb NF4 + double quant, the golden PEFT adapter as the
//! start): twenty AdamW steps on batches of 6 × 24 tokens (144 rows, so the NF4 linears take
//! the bf16 path), then the loss of every batch with the trained adapter. Every step's loss
//! and the final loss must be within 1 % of f32's (the mixed-precision issue's bound), and
//! differ from it (the bf16 path ran). One test: the tier is process-wide.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_cpu_gemm::{Tier, set_matmul_tier};
use qlora_llama::causal_lm_loss;

#[path = "support/curve.rs"]
mod curve;

/// Trains 20 steps on `tier`; returns each step's loss and the mean loss of all 10 batches
/// after training.
fn train(tier: Tier) -> (Vec<f32>, f32) {
    set_matmul_tier(tier);
    let (ids, labels, _) = curve::curve();
    // 30 × [2, 24] in the file: batch b is rows of steps 3b, 3b+1, 3b+2, as [6, 24].
    let per = 6 * 24;
    let device = Device::flex().autodiff();
    let batch = |v: &[i64], b: usize| {
        Tensor::<2, Int>::from_data(
            TensorData::new(v[b * per..(b + 1) * per].to_vec(), [6, 24]),
            &device,
        )
    };
    let (mut model, mut optim) = curve::start(&device);
    let mut losses = Vec::new();
    for step in 0..20 {
        let b = step % 10;
        let loss = causal_lm_loss(model.forward(batch(&ids, b), None), batch(&labels, b));
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let eval: f32 = (0..10)
        .map(|b| {
            causal_lm_loss(model.forward(batch(&ids, b), None), batch(&labels, b))
                .into_scalar::<f32>()
        })
        .sum::<f32>()
        / 10.0;
    set_matmul_tier(Tier::F32);
    (losses, eval)
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to train with"
)]
fn bf16_qlora_training_stays_within_one_percent_of_f32() {
    let tier = Tier::detect();
    assert_ne!(
        tier,
        Tier::F32,
        "the CPU reports bf16 instructions but no tier is usable (AMX refused by the OS and no \
         AVX512-BF16?)"
    );
    let (f32_steps, f32_eval) = train(Tier::F32);
    let (bf16_steps, bf16_eval) = train(tier);
    let rel = |a: f32, b: f32| (a - b).abs() / b.abs();
    let worst = f32_steps
        .iter()
        .zip(&bf16_steps)
        .map(|(&f, &b)| rel(b, f))
        .fold(0f32, f32::max);
    println!(
        "bf16 on {tier}: worst step loss {worst:.2e} relative to f32; final loss {bf16_eval} vs \
         f32 {f32_eval} ({:.2e})",
        rel(bf16_eval, f32_eval)
    );
    assert!(worst < 0.01, "a step's loss is off by {worst:.2e}");
    assert!(
        rel(bf16_eval, f32_eval) < 0.01,
        "final loss {bf16_eval} vs {f32_eval}"
    );
    assert_ne!(f32_steps, bf16_steps, "the bf16 path did not run");
    assert!(bf16_eval < 0.9 * bf16_steps[0], "bf16 training learns");
}
