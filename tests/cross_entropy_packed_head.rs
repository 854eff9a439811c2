//! The fused head + cross-entropy on a bf16 tier keeps the last head weight it packed, with a
//! clone of its tensor, so that a frozen head is packed once rather than every step. What it
//! must never do is use a packing of other values: the same weight again gives the same bits
//! as a fresh packing of a copy; another weight, and the same weight changed in place after the
//! first call, each give their own loss and gradient. One test: the tier is process-wide.

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_qlora::cpu_gemm::{Tier, set_matmul_tier};
use burn_qlora::fused::linear_cross_entropy;

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{vals, values};

/// Losses and input gradient of the head `w` over fixed rows (300 ≥ the bf16 path's 256).
fn run(w: Tensor<2>, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let (n, h) = (300, 40);
    let v = w.dims()[0];
    let x = Tensor::<2>::from_data(TensorData::new(values(n * h, 1, 1.0), [n, h]), device)
        .require_grad();
    let t: Vec<i64> = (0..n).map(|i| ((i * 7919) % v) as i64).collect();
    let t = Tensor::<1, Int>::from_data(TensorData::new(t, [n]), device);
    let a = Tensor::<1>::ones([n], device);
    let loss = linear_cross_entropy(x.clone(), w, t, a);
    let grads = loss.clone().sum().backward();
    (vals(loss), vals(x.grad(&grads).unwrap()))
}

/// A copy of `w` in a buffer of its own (a fresh packing).
fn copy(w: &Tensor<2>) -> Tensor<2> {
    Tensor::from_data(w.to_data(), &w.device())
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 head to cache"
)]
fn packed_head_is_reused_for_the_same_weight_only() {
    let tier = Tier::BF16
        .into_iter()
        .find(|t| t.available())
        .expect("the CPU reports bf16 instructions, yet no bf16 tier is usable here");
    eprintln!("packed head cache: tier {tier}");
    set_matmul_tier(tier);
    let device = Device::flex().autodiff();
    let (v, h) = (3000, 40);
    let head =
        |seed| Tensor::<2>::from_data(TensorData::new(values(v * h, seed, 0.3), [v, h]), &device);
    let w1 = head(2);
    let first = run(w1.clone(), &device);
    // Cached: the same bits as a fresh packing of the same values.
    assert_eq!(run(w1.clone(), &device), first, "the same weight again");
    assert_eq!(run(copy(&w1), &device), first, "a copy of the weight");
    // Another weight of the same shape.
    let w2 = head(3);
    let second = run(w2.clone(), &device);
    assert_ne!(second.0, first.0, "another weight gives another loss");
    assert_eq!(
        run(copy(&w2), &device),
        second,
        "a copy of the other weight"
    );
    // The first weight changed through its last handle of ours (Flex would write in place
    // into a buffer nobody else holds).
    let _ = run(w1.clone(), &device);
    let w1 = w1.mul_scalar(2.0);
    let changed = run(w1.clone(), &device);
    assert_ne!(changed.0, first.0, "the changed weight gives another loss");
    assert_eq!(
        run(copy(&w1), &device),
        changed,
        "a copy of the changed weight"
    );
    set_matmul_tier(Tier::F32);
}
