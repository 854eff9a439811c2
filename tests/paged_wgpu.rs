//! `Paged<AdamW>` with parameters on the wgpu device and paged-out state on the host (Flex):
//! the same parameters as plain AdamW on wgpu, state really moved under a small budget, nothing
//! moved under an unlimited one. Ignored (with the reason) on a machine with no Vulkan driver.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use burn_qlora::optim::Paged;

#[path = "support/numeric.rs"]
mod numeric;
#[path = "support/wgpu.rs"]
mod wgpu_support;
use numeric::values;

fn wgpu() -> Device {
    wgpu_support::device(DeviceKind::default())
}

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
}

fn train(device: &Device, mut optim: ModuleOptimizer, steps: usize) -> Vec<f32> {
    let ad = device.clone().autodiff();
    let lin = |i: usize, o: usize, seed| Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(values(i * o, seed, 0.05), [i, o]),
            &ad,
        )),
        bias: None,
    };
    // Two weights of 120,000 elements: both pageable.
    let mut net = Net {
        a: lin(300, 400, 1),
        b: lin(400, 300, 2),
    };
    for step in 0..steps {
        let x = Tensor::<2>::from_data(
            TensorData::new(values(4 * 300, 10 + step as u64, 0.05), [4, 300]),
            &ad,
        );
        let loss = net.b.forward(net.a.forward(x).tanh()).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    [net.a.weight.val(), net.b.weight.val()]
        .into_iter()
        .flat_map(|w| w.into_data().try_to_vec::<f32>().unwrap())
        .collect()
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn paged_adamw_on_wgpu_moves_state_and_matches_adamw() {
    let device = wgpu();
    let adamw = || AdamWConfig::new().with_weight_decay(0.0).build();
    let plain = train(&device, ModuleOptimizer::from(adamw()), 20);
    let one_state = 120_000 * 8;
    let paged = Paged::new(adamw(), Device::flex(), one_state);
    let stats = paged.stats();
    let got = train(&device, ModuleOptimizer::from(paged), 20);
    assert!(got == plain, "paged AdamW differs from AdamW on wgpu");
    // One state fits; the other goes out after every update and comes back before the next.
    assert_eq!(stats.resident_bytes(), one_state);
    assert_eq!(stats.page_outs(), 19 + 1);
    assert_eq!(stats.page_ins(), 19);
    assert_eq!(stats.bytes_moved(), 39 * one_state as u64);
    assert!(stats.peak_resident_bytes() <= one_state + one_state);

    let paged = Paged::new(adamw(), Device::flex(), usize::MAX);
    let stats = paged.stats();
    let got = train(&device, ModuleOptimizer::from(paged), 20);
    assert!(got == plain);
    assert_eq!(stats.bytes_moved(), 0);
}
