//! The CubeCL NF4 kernels against the device's own limits: dequantize GB/s against the measured
//! copy bandwidth, the fused `nf4_linear` (kernel chosen by measuring) and each kernel forced,
//! against the dense matmul of the same shape in f32 and, where the device has it, bf16; the
//! decode GEMV against the dense GEMV (M = 1).
//!
//! Shared by `benches/cube_kernels.rs` and the GPU check (`examples/gpu_check`). Full shapes
//! are issue #25's: M = 1, 16, 512, 4096 rows, weights 4096 × 4096 and 11008 × 4096
//! (LLaMA-7B's attention and MLP projections); `quick` takes K = N = 1024 shapes, for software
//! drivers.

use std::time::Instant;

use burn::tensor::{DType, Device, Distribution, Tensor};
use burn_qlora::backend::{Nf4Kernel, Nf4Weight, force_nf4_kernel, nf4_dequantize, nf4_linear};
use burn_qlora::nf4::QuantConfig;
use serde_json::{Value, json};

/// Median milliseconds of `f` run to completion on `device` (after one warm-up run).
pub fn median_ms<T>(device: &Device, reps: usize, mut f: impl FnMut() -> T) -> f64 {
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

/// The two tables: rows as JSON, and as the markdown `benches/README.md` takes.
pub struct Tables {
    pub json: Value,
    pub markdown: String,
}

/// Measures both tables on `device`.
pub fn run(device: &Device, quick: bool) -> Tables {
    let bf16 = device.supports_dtype(DType::BF16);
    let (ms, shapes): (Vec<usize>, Vec<(usize, usize)>) = if quick {
        (vec![1, 16, 512], vec![(1024, 1024), (2752, 1024)])
    } else {
        (vec![1, 16, 512, 4096], vec![(4096, 4096), (11008, 4096)])
    };
    let reps = if quick { 5 } else { 11 };
    let mut md = format!(
        "device: {device:?}; bf16: {}\n",
        if bf16 { "yes" } else { "no" }
    );
    let mut dequant_rows = Vec::new();
    md += "\n| weight [N, K] | copy GB/s | dequantize (f32 out) GB/s | % of copy |\n|---|---|---|---|\n";
    for &(n, k) in &shapes {
        let numel = n * k;
        let dense = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), device);
        let copy = median_ms(device, reps, || dense.clone().add_scalar(1.0));
        let copy_gbs = 8.0 * numel as f64 / copy / 1e6;
        let w = Nf4Weight::quantize("w", dense.clone(), QuantConfig::qlora()).expect("quantize");
        let deq = median_ms(device, reps, || nf4_dequantize(&w));
        // Packed codes, 8-bit absmax codes, f32 out (the nested scales are negligible).
        let bytes = numel as f64 * (0.5 + 1.0 / 64.0 + 4.0);
        let deq_gbs = bytes / deq / 1e6;
        md += &format!(
            "| {n} × {k} | {copy_gbs:.1} | {deq_gbs:.1} | {:.0} % |\n",
            100.0 * deq_gbs / copy_gbs
        );
        dequant_rows.push(json!({"n": n, "k": k, "copy_gbs": copy_gbs, "dequantize_gbs": deq_gbs}));
    }

    let mut linear_rows = Vec::new();
    md += "\n| M | weight [N, K] | fused nf4_linear ms (chosen) | gemv | tiled 64 | simple 16 | \
           dequant + matmul | dense f32 ms | dense bf16 ms | fused / dense |\n\
           |---|---|---|---|---|---|---|---|---|---|\n";
    for &(n, k) in &shapes {
        let dense = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), device);
        let w = Nf4Weight::quantize("w", dense.clone(), QuantConfig::qlora()).expect("quantize");
        let wt = dense.transpose().add_scalar(0.0); // [K, N], contiguous
        let wt16 = bf16.then(|| wt.clone().cast(DType::BF16));
        for &m in &ms {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
            let time = |kernel: Option<Nf4Kernel>| {
                force_nf4_kernel(kernel);
                let t = median_ms(device, reps, || nf4_linear(x.clone(), &w));
                force_nf4_kernel(None);
                t
            };
            let chosen = time(None);
            let gemv = (m <= 8).then(|| time(Some(Nf4Kernel::Gemv)));
            let tiled = time(Some(Nf4Kernel::Tiled));
            let simple = (m * n <= 512 * 4096).then(|| time(Some(Nf4Kernel::Simple)));
            let dq = time(Some(Nf4Kernel::DequantMatmul));
            let d32 = median_ms(device, reps, || x.clone().matmul(wt.clone()));
            let d16 = wt16.as_ref().map(|wt16| {
                let x16 = x.clone().cast(DType::BF16);
                median_ms(device, reps, || x16.clone().matmul(wt16.clone()))
            });
            let ratio = chosen / d16.unwrap_or(d32);
            md += &format!(
                "| {m} | {n} × {k} | {chosen:.3} | {} | {tiled:.3} | {} | {dq:.3} | {d32:.3} | {} | {ratio:.2} |\n",
                cell(gemv),
                cell(simple),
                cell(d16),
            );
            linear_rows.push(json!({
                "m": m, "n": n, "k": k, "chosen_ms": chosen, "gemv_ms": gemv, "tiled_ms": tiled,
                "simple_ms": simple, "dequant_matmul_ms": dq, "dense_f32_ms": d32,
                "dense_bf16_ms": d16, "fused_over_dense": ratio,
            }));
        }
    }
    Tables {
        json: json!({"bf16": bf16, "dequantize": dequant_rows, "nf4_linear": linear_rows}),
        markdown: md,
    }
}
