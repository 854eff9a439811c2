//! The fused linear + cross-entropy op against the same loss composed of Burn ops (matmul,
//! log-softmax, gather), on Flex (the fused host kernel) and on wgpu where an adapter exists
//! (the composite default bodies on CubeCL): per-row losses, ignored rows, and the gradients
//! in the rows and in the head under a non-uniform upstream gradient.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use burn_qlora::fused::linear_cross_entropy;

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{assert_close, vals, values};
#[path = "support/wgpu.rs"]
mod wgpu;

/// Runs the checks on `device` (an autodiff device is made from it).
fn check(device: &Device) {
    // 300 rows (more than one chunk of the host kernel for v = 20_000), odd sizes.
    let (n, h, v) = (300, 37, 20_000);
    let ad = device.clone().autodiff();
    let targets: Vec<i64> = (0..n).map(|i| ((i * 7919) % v) as i64).collect();
    let weights: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { 0.0 } else { 1.0 }).collect();
    let upstream: Vec<f32> = (0..n).map(|i| 0.5 + (i % 3) as f32).collect();
    let make = |d: &Device| {
        let grad = |t: Tensor<2>| if d.is_autodiff() { t.require_grad() } else { t };
        (
            grad(Tensor::<2>::from_data(
                TensorData::new(values(n * h, 1, 1.0), [n, h]),
                d,
            )),
            grad(Tensor::<2>::from_data(
                TensorData::new(values(v * h, 2, 0.2), [v, h]),
                d,
            )),
            Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [n]), d),
            Tensor::<1>::from_data(TensorData::new(weights.clone(), [n]), d),
            Tensor::<1>::from_data(TensorData::new(upstream.clone(), [n]), d),
        )
    };

    let (x, w, t, a, g) = make(&ad);
    let ours = linear_cross_entropy(x.clone(), w.clone(), t, a);
    let ours_loss = vals(ours.clone());
    let grads = (ours * g).sum().backward();
    let (ours_dx, ours_dw) = (vals(x.grad(&grads).unwrap()), vals(w.grad(&grads).unwrap()));

    let (x, w, t, a, g) = make(&ad);
    let logp = log_softmax(x.clone().matmul(w.clone().transpose()), 1);
    let want = logp.gather(1, t.reshape([n, 1])).reshape([n]).neg() * a;
    let want_loss = vals(want.clone());
    let grads = (want * g).sum().backward();
    let (want_dx, want_dw) = (vals(x.grad(&grads).unwrap()), vals(w.grad(&grads).unwrap()));

    assert_close(&ours_loss, &want_loss, 1e-5, "loss");
    for i in (3..n).step_by(5) {
        assert_eq!(ours_loss[i], 0.0, "an ignored row has loss 0");
    }
    assert_close(&ours_dx, &want_dx, 1e-4, "dx");
    assert_close(&ours_dw, &want_dw, 1e-4, "dw");

    // Without autodiff: the same losses.
    let (x, w, t, a, _) = make(device);
    assert_close(
        &vals(linear_cross_entropy(x, w, t, a)),
        &want_loss,
        1e-5,
        "loss, no autodiff",
    );
}

#[test]
fn fused_cross_entropy_on_flex() {
    check(&Device::flex());
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn fused_cross_entropy_on_wgpu() {
    check(&wgpu::device(DeviceKind::default()));
}
