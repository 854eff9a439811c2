//! NF4/FP4 quantize and dequantize throughput on a 4096×4096 f32 matrix (the shape of
//! `benches/peer/bench_quant.py`), printed as a table.
//!
//! ```text
//! cargo bench --bench nf4_quant                       # 2 threads, as the peer
//! cargo bench --bench nf4_quant -- --peer peer.json   # also print ratios to bnb's figures
//! ```
//! `RAYON_NUM_THREADS` overrides the thread count.

use std::time::Instant;

use qlora_nf4::{Blocksize, QuantConfig, QuantType, QuantizedTensor};

const N: usize = 4096;

/// Deterministic N(0, 1) samples (xorshift64* + Box–Muller).
fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}

fn peer_figures(path: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| eprintln!("peer file {path}: {e}"))
        .ok()?;
    serde_json::from_str(&text)
        .map_err(|e| eprintln!("peer file {path}: {e}"))
        .ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let peer = args
        .iter()
        .position(|a| a == "--peer")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| peer_figures(p));
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");

    let w: Vec<f32> = randn(N * N, 0).into_iter().map(|v| v * 0.02).collect();
    println!("NF4/FP4 on a {N}x{N} f32 matrix, blocksize 64, {threads} threads (median of reps)\n");
    println!(
        "| mode | quantize ms | quantize M elem/s | dequantize ms | dequantize GB/s (f32 out) | vs bnb quantize | vs bnb dequantize |"
    );
    println!("|---|---|---|---|---|---|---|");
    for qt in [QuantType::Nf4, QuantType::Fp4] {
        for dq in [false, true] {
            let cfg = QuantConfig {
                quant_type: qt,
                blocksize: Blocksize::DEFAULT,
                double_quant: dq,
                absmax_rounding: Default::default(),
            };
            let tq = median_secs(8, || {
                std::hint::black_box(QuantizedTensor::quantize("w", &w, &[N, N], cfg).unwrap());
            });
            let q = QuantizedTensor::quantize("w", &w, &[N, N], cfg).unwrap();
            let absmax = q.absmax.to_f32();
            let mut out = vec![0f32; N * N];
            let td = median_secs(15, || {
                q.dequantize_rows_into(0..N, &mut out, &absmax).unwrap();
                std::hint::black_box(&out);
            });
            let tag = format!("{}{}", qt.as_str(), if dq { "+DQ" } else { "" });
            let melem = (N * N) as f64 / tq / 1e6;
            let gbps = (N * N * 4) as f64 / td / 1e9;
            let (rq, rd) = match peer.as_ref().and_then(|p| p.get(&tag)) {
                Some(p) => (
                    format!(
                        "{:.1}x",
                        melem / p["quantize_Melem_per_s"].as_f64().unwrap_or(f64::NAN)
                    ),
                    format!(
                        "{:.1}x",
                        gbps / p["dequantize_output_GBps"].as_f64().unwrap_or(f64::NAN)
                    ),
                ),
                None => ("-".into(), "-".into()),
            };
            println!(
                "| {tag} | {:.1} | {melem:.0} | {:.1} | {gbps:.2} | {rq} | {rd} |",
                tq * 1e3,
                td * 1e3
            );
        }
    }
}
