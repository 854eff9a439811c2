//! `burn_qlora::fused::seeded_dropout`, the dropout of LoRA adapters: a mask drawn from a seed,
//! drawn again in the backward pass instead of kept. On Flex (counter-based host kernel) and on
//! wgpu where an adapter exists (the backend's generator reseeded): the kept fraction, the
//! scaling, the gradient masked exactly where the output is, and the same mask for the same
//! seed.

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use burn_qlora::fused::seeded_dropout;

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{vals, values};

#[path = "support/wgpu.rs"]
mod wgpu;

fn check(device: &Device) {
    let ad = device.clone().autodiff();
    let (rows, cols, prob) = (64, 300, 0.25);
    // Away from zero, so that a dropped element is told from a kept one by its value.
    let raw: Vec<f32> = values(rows * cols, 1, 1.0)
        .into_iter()
        .map(|v| v.signum() * (0.5 + v.abs()))
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(raw.clone(), [rows, cols]), &ad).require_grad();
    let g = Tensor::<2>::from_data(
        TensorData::new(values(rows * cols, 2, 1.0), [rows, cols]),
        &ad,
    );
    let y = seeded_dropout(x.clone(), prob, 5);
    let yv = vals(y.clone());
    let grads = (y * g.clone()).sum().backward();
    let dx = vals(x.grad(&grads).unwrap());
    let gv = vals(g);
    let keep = 1.0 - prob as f32;
    let mut kept = 0;
    for i in 0..raw.len() {
        if yv[i] == 0.0 {
            assert_eq!(
                dx[i], 0.0,
                "element {i}: dropped, but its gradient is {}",
                dx[i]
            );
        } else {
            kept += 1;
            assert!(
                (yv[i] - raw[i] / keep).abs() <= 1e-5 * yv[i].abs(),
                "element {i}"
            );
            assert!(
                (dx[i] - gv[i] / keep).abs() <= 1e-5 * (1.0 + dx[i].abs()),
                "element {i}"
            );
        }
    }
    let frac = kept as f64 / raw.len() as f64;
    assert!((frac - 0.75).abs() < 0.02, "kept {frac}");
    let x = Tensor::<2>::from_data(TensorData::new(raw, [rows, cols]), device);
    let again = vals(seeded_dropout(x.clone(), prob, 5));
    assert_eq!(again, yv, "the same seed gives the same mask");
    assert_ne!(vals(seeded_dropout(x, prob, 6)), yv);
}

#[test]
fn seeded_dropout_on_flex() {
    check(&Device::flex());
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn seeded_dropout_on_wgpu() {
    check(&wgpu::device(DeviceKind::default()));
}
