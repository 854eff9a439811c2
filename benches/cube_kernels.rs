//! The CubeCL NF4 kernels against the device's own limits, printed as a table: dequantize GB/s
//! against the measured copy bandwidth, the fused `nf4_linear` (kernel chosen by measuring) and
//! each kernel forced, against the dense matmul of the same shape in f32 and, where the device
//! has it, bf16; the decode GEMV against the dense GEMV.
//!
//! ```text
//! cargo bench --bench cube_kernels                      # wgpu (any Vulkan/Metal/DX12 device)
//! cargo bench --features cuda --bench cube_kernels      # CUDA device 0
//! cargo bench --bench cube_kernels -- --quick           # K = N = 1024 shapes (software drivers)
//! ```
//!
//! Full shapes are the issue's: M = 1, 16, 512, 4096 rows, weights 4096 × 4096 and
//! 11008 × 4096 (LLaMA-7B's attention and MLP projections).

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Tensor};
use burn_qlora::backend::{Nf4Kernel, Nf4Weight, force_nf4_kernel, nf4_dequantize, nf4_linear};
use burn_qlora::nf4::QuantConfig;

fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::wgpu(burn::tensor::DeviceKind::default())
    }
}

/// Median milliseconds of `f` run to completion on `device` (after one warm-up run).
fn median_ms<T>(device: &Device, reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut once = || {
        let out = f();
        device.sync().expect("device sync");
        drop(out);
    };
    once();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            once();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let device = device();
    let bf16 = device.supports_dtype(DType::BF16);
    let (ms, shapes): (Vec<usize>, Vec<(usize, usize)>) = if quick {
        (vec![1, 16, 512], vec![(1024, 1024), (2752, 1024)])
    } else {
        (vec![1, 16, 512, 4096], vec![(4096, 4096), (11008, 4096)])
    };
    let reps = if quick { 5 } else { 11 };
    println!(
        "device: {device:?}; bf16: {}",
        if bf16 { "yes" } else { "no" }
    );

    println!("\n| weight [N, K] | copy GB/s | dequantize (f32 out) GB/s | % of copy |");
    println!("|---|---|---|---|");
    for &(n, k) in &shapes {
        let numel = n * k;
        let dense = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), &device);
        let copy = median_ms(&device, reps, || dense.clone().add_scalar(1.0));
        let copy_gbs = 8.0 * numel as f64 / copy / 1e6;
        let w = Nf4Weight::quantize("w", dense.clone(), QuantConfig::qlora()).expect("quantize");
        let deq = median_ms(&device, reps, || nf4_dequantize(&w));
        // Packed codes, 8-bit absmax codes, f32 out (the nested scales are negligible).
        let bytes = numel as f64 * (0.5 + 1.0 / 64.0 + 4.0);
        let deq_gbs = bytes / deq / 1e6;
        println!(
            "| {n} × {k} | {copy_gbs:.1} | {deq_gbs:.1} | {:.0} % |",
            100.0 * deq_gbs / copy_gbs
        );
    }

    println!(
        "\n| M | weight [N, K] | fused nf4_linear ms (chosen) | gemv | tiled 64 | simple 16 | \
         dequant + matmul | dense f32 ms | dense bf16 ms | fused / dense |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &(n, k) in &shapes {
        let dense = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), &device);
        let w = Nf4Weight::quantize("w", dense.clone(), QuantConfig::qlora()).expect("quantize");
        let wt = dense.transpose().add_scalar(0.0); // [K, N], contiguous
        let wt16 = bf16.then(|| wt.clone().cast(DType::BF16));
        for &m in &ms {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let time = |kernel: Option<Nf4Kernel>| {
                force_nf4_kernel(kernel);
                let t = median_ms(&device, reps, || nf4_linear(x.clone(), &w));
                force_nf4_kernel(None);
                t
            };
            let chosen = time(None);
            let gemv = (m <= 8).then(|| time(Some(Nf4Kernel::Gemv)));
            let tiled = time(Some(Nf4Kernel::Tiled));
            let simple = (m * n <= 512 * 4096).then(|| time(Some(Nf4Kernel::Simple)));
            let dq = time(Some(Nf4Kernel::DequantMatmul));
            let d32 = median_ms(&device, reps, || x.clone().matmul(wt.clone()));
            let d16 = wt16.as_ref().map(|wt16| {
                let x16 = x.clone().cast(DType::BF16);
                median_ms(&device, reps, || x16.clone().matmul(wt16.clone()))
            });
            println!(
                "| {m} | {n} × {k} | {chosen:.3} | {} | {tiled:.3} | {} | {dq:.3} | {d32:.3} | {} | {:.2} |",
                cell(gemv),
                cell(simple),
                cell(d16),
                chosen / d16.unwrap_or(d32)
            );
        }
    }
}
