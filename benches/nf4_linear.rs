//! Flex `nf4_linear` (x · Wᵀ with W in NF4 + double quantization) against the dense f32 matmul
//! of the same shape on Flex, printed as a table.
//!
//! ```text
//! cargo bench --bench nf4_linear                      # 2 threads, as the peer
//! cargo bench --bench nf4_linear -- --peer peer.json  # adds bnb's matmul_4bit from bench_quant.py
//! ```

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use burn_qlora::backend::{Nf4Weight, nf4_linear, nf4_linear_backward_input};
use burn_qlora::nf4::QuantConfig;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let peer: Option<serde_json::Value> = args
        .iter()
        .position(|a| a == "--peer")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");

    let device = Device::flex();
    println!("Flex, {threads} threads, f32 compute, NF4 + double quantization (median of reps)\n");
    println!(
        "| M | N | K | nf4_linear ms | dense x·W ms | ratio | nf4 backward-input ms | dense dy·Wᵀ ms | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (m, n, k) in [
        (1024, 4096, 4096),
        (512, 4096, 4096),
        (16, 4096, 4096),
        (1, 4096, 4096),
        (1024, 11008, 4096),
    ] {
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.02), &device);
        let nf4 = Nf4Weight::quantize("w", w.clone(), QuantConfig::qlora()).unwrap();
        // The dense layer as Burn's Linear stores it: [in, out], contiguous.
        let dense_in_out = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device);
        let dense_out_in = w;
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let dy = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
        let reps = if m >= 512 { 5 } else { 15 };
        let t_nf4 = median_ms(reps, || {
            std::hint::black_box(nf4_linear(x.clone(), &nf4).into_data());
        });
        let t_dense = median_ms(reps, || {
            std::hint::black_box(x.clone().matmul(dense_in_out.clone()).into_data());
        });
        let t_nf4_bw = median_ms(reps, || {
            std::hint::black_box(nf4_linear_backward_input(dy.clone(), &nf4).into_data());
        });
        let t_dense_bw = median_ms(reps, || {
            std::hint::black_box(dy.clone().matmul(dense_out_in.clone()).into_data());
        });
        println!(
            "| {m} | {n} | {k} | {t_nf4:.1} | {t_dense:.1} | {:.2} | {t_nf4_bw:.1} | {t_dense_bw:.1} | {:.2} |",
            t_nf4 / t_dense,
            t_nf4_bw / t_dense_bw
        );
    }
    if let Some(p) = peer {
        let pick = |v: &serde_json::Value| v["median_clean"].as_f64().or(v["median_all"].as_f64());
        if let Some(bnb) = pick(&p["matmul_4bit_1024x4096x4096_nf4DQ"]) {
            println!(
                "\npeer (same run): bnb matmul_4bit 1024x4096 · NF4-DQ 4096x4096: {:.1} ms",
                bnb * 1e3
            );
        }
        if let Some(t) = pick(&p["linear_fp32_1024x4096x4096"]) {
            println!(
                "peer (same run): torch fp32 F.linear 1024x4096x4096: {:.1} ms",
                t * 1e3
            );
        }
    }
}
