//! Our bf16 GEMM per tier against the f32 GEMM the step otherwise uses (the `gemm` crate, as
//! Burn Flex and the NF4 host kernels run it), on the default model's shapes (SmolLM2-135M,
//! 4 × 256 tokens) and 4096², printing a table of GFLOP/s. Packing is timed apart: the NF4
//! path packs `B` while dequantizing, `A` once per product.
//!
//! `cargo bench -p qlora-cpu-gemm --bench bf16_gemm [-- --quick]`; PyTorch's matmul on the same
//! shapes: `benches/peer/bf16_gemm.py` (`benches/compare_gemm.sh` runs both).

use std::time::Instant;

use qlora_cpu_gemm::{PackedA, PackedB, Tier, fastest_tier, gemm_bf16, gemm_f32};

fn values(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Median seconds of `f` over enough repetitions for ~0.3 s (at least 3).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.3 / once) as usize).clamp(3, 200);
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[reps / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let shapes: &[(usize, usize, usize, &str)] = &[
        (1024, 1536, 576, "gate/up (x·Wᵀ)"),
        (1024, 576, 1536, "down; gate/up backward-input (dy·W)"),
        (1024, 576, 576, "q/o"),
        (1024, 192, 576, "k/v"),
        (2048, 2048, 2048, "2048³"),
        (4096, 4096, 4096, "4096³"),
    ];
    let tiers: Vec<Tier> = Tier::BF16.into_iter().filter(|t| t.available()).collect();
    println!(
        "threads {}, CPU flags {:?}, best tier {}, fastest measured {}",
        rayon::current_num_threads(),
        Tier::cpu_flags(),
        Tier::detect(),
        fastest_tier()
    );
    print!("| M × N × K | what | f32 GFLOP/s |");
    for t in &tiers {
        print!(" {t} GFLOP/s | {t} / f32 | {t} packing ms |");
    }
    println!();
    for &(m, n, k, what) in shapes {
        if quick && m * n * k > 2048usize.pow(3) {
            continue;
        }
        let a = values(m * k);
        let b = values(k * n);
        let flops = 2.0 * (m * n * k) as f64;
        let mut out = vec![0f32; m * n];
        let f32_s = time(|| gemm_f32(&a, &b, &mut out, (m, n, k)));
        print!("| {m} × {n} × {k} | {what} | {:.0} |", flops / f32_s / 1e9);
        for &t in &tiers {
            let pa = PackedA::from_f32(&a, m, k, k);
            let pb = PackedB::from_f32(&b, k, n, n, 1);
            let s = time(|| gemm_bf16(t, &pa, &pb, &mut out, n, false));
            let pack = time(|| {
                let pa = PackedA::from_f32(&a, m, k, k);
                let pb = PackedB::from_f32(&b, k, n, n, 1);
                std::hint::black_box((pa, pb));
            });
            print!(
                " {:.0} | {:.2} | {:.2} |",
                flops / s / 1e9,
                f32_s / s,
                pack * 1e3
            );
        }
        println!();
    }
}
