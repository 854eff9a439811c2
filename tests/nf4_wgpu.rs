//! The `nf4_*` ops through Burn on the wgpu device (CubeCL kernels behind Fusion, and Autodiff
//! over them), against the `qlora-nf4` reference and the Flex implementation.
//!
//! Runs wherever a Vulkan driver is present, Mesa's software lavapipe included (CI installs it
//! with `.ci/setup-wgpu-lavapipe.sh`). Without one `cargo test` lists them as ignored, with the
//! reason.

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use burn_qlora::backend::{Nf4Weight, nf4_dequantize, nf4_linear, nf4_linear_backward_input};
use burn_qlora::nf4::{Blocksize, QuantConfig, QuantType, QuantizedTensor};

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{assert_close, vals};
#[path = "support/wgpu.rs"]
mod wgpu_support;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut u = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| ((-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32)
        .collect()
}

/// The wgpu device.
fn wgpu() -> Device {
    wgpu_support::device(DeviceKind::default())
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn dequantize_linear_and_gradients_on_wgpu() {
    let gpu = wgpu();
    let cpu = Device::flex();
    let configs = [
        QuantConfig::qlora(),
        QuantConfig {
            quant_type: QuantType::Fp4,
            blocksize: Blocksize::new(256, "w").unwrap(),
            double_quant: false,
            absmax_rounding: Default::default(),
        },
    ];
    for (i, &(m, n, k)) in [(1usize, 33usize, 4160usize), (17, 65, 37), (3, 16, 64)]
        .iter()
        .enumerate()
    {
        for cfg in configs {
            let q = QuantizedTensor::quantize("w", &randn(n * k, i as u64), &[n, k], cfg).unwrap();
            let wg = Nf4Weight::from_quantized(&q, "w", &gpu).unwrap();
            let wc = Nf4Weight::from_quantized(&q, "w", &cpu).unwrap();
            let deq = vals(nf4_dequantize(&wg));
            assert_eq!(
                deq,
                q.dequantize_f32(),
                "{n}x{k} {cfg:?}: dequantize bit-exact"
            );

            let x = randn(m * k, 10 + i as u64);
            let yg = vals(nf4_linear(
                Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &gpu),
                &wg,
            ));
            let yc = vals(nf4_linear(
                Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &cpu),
                &wc,
            ));
            assert_close(&yg, &yc, 1e-5, "y");

            let dy = randn(m * n, 20 + i as u64);
            let dxg = vals(nf4_linear_backward_input(
                Tensor::<2>::from_data(TensorData::new(dy.clone(), [m, n]), &gpu),
                &wg,
            ));
            let dxc = vals(nf4_linear_backward_input(
                Tensor::<2>::from_data(TensorData::new(dy.clone(), [m, n]), &cpu),
                &wc,
            ));
            assert_close(&dxg, &dxc, 1e-5, "dx");

            // Autodiff over the fused Cube backend: d(sum(y ⊙ g))/dx = g · W.
            let ad = gpu.clone().autodiff();
            let wa = Nf4Weight::from_quantized(&q, "w", &ad).unwrap();
            let xa = Tensor::<2>::from_data(TensorData::new(x, [m, k]), &ad).require_grad();
            let g = Tensor::<2>::from_data(TensorData::new(dy, [m, n]), &ad);
            let grads = (nf4_linear(xa.clone(), &wa) * g).sum().backward();
            assert_close(&vals(xa.grad(&grads).unwrap()), &dxc, 1e-5, "autodiff dx");
        }
    }
}
