//! Step time of `Paged<AdamW>` against plain AdamW, when all state fits the budget and when half
//! of it is paged out, on Flex and (when an adapter is present) on wgpu with Flex as the host.
//!
//! `cargo run --release --example paged_optimizer`. Only the optimizer step is timed (the
//! gradients come from one backward pass, reused); the median of 15 steps after 3 warm-up steps.

use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use burn_qlora::optim::Paged;

#[derive(Module, Debug)]
struct Stack {
    layers: Vec<Linear>,
}

const LAYERS: usize = 8;
const DIM: usize = 512; // 262,144 weights a layer: every weight's state is pageable.

fn stack(device: &Device) -> Stack {
    Stack {
        layers: (0..LAYERS)
            .map(|i| Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(
                        (0..DIM * DIM)
                            .map(|j| ((i * 31 + j) % 97) as f32 * 1e-3)
                            .collect::<Vec<_>>(),
                        [DIM, DIM],
                    ),
                    device,
                )),
                bias: None,
            })
            .collect(),
    }
}

fn median_step_ms(device: &Device, mut optim: ModuleOptimizer) -> f64 {
    let ad = device.clone().autodiff();
    let mut model = stack(&ad);
    let mut times = Vec::new();
    for step in 0..18 {
        let x = Tensor::<2>::ones([4, DIM], &ad);
        let y = model.layers.iter().fold(x, |h, l| l.forward(h));
        let grads = GradientsParams::from_grads(y.mean().backward(), &model);
        let t = Instant::now();
        model = optim.step(1e-4, model, grads);
        let _ = model.layers[LAYERS - 1]
            .weight
            .val()
            .slice([0..1, 0..1])
            .into_data();
        if step >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let state_per_layer = DIM * DIM * 8; // AdamW: two f32 moments
    let mut devices = vec![("flex", Device::flex())];
    if let Ok(d) = std::panic::catch_unwind(|| {
        let d = Device::wgpu(DeviceKind::default());
        let _ = Tensor::<1>::from_floats([1.0], &d).into_data();
        d
    }) {
        devices.push(("wgpu", d));
    }
    println!("| device | optimizer | budget | step ms | ratio to AdamW | bytes moved / step |");
    println!("|---|---|---|---:|---:|---:|");
    for (name, device) in devices {
        let adamw = || AdamWConfig::new().with_weight_decay(0.0).build();
        let base = median_step_ms(&device, ModuleOptimizer::from(adamw()));
        println!("| {name} | AdamW | - | {base:.2} | 1.00 | 0 |");
        for (label, budget) in [
            ("all fits", usize::MAX),
            ("half paged", state_per_layer * LAYERS / 2),
        ] {
            let paged = Paged::new(adamw(), Device::flex(), budget);
            let stats = paged.stats();
            let ms = median_step_ms(&device, ModuleOptimizer::from(paged));
            let per_step = stats.bytes_moved() as f64 / 18.0;
            println!(
                "| {name} | Paged<AdamW> | {label} | {ms:.2} | {:.2} | {:.1} MiB |",
                ms / base,
                per_step / (1024.0 * 1024.0)
            );
        }
    }
}
