//! The NF4 linear on Flex with bf16 compute (`qlora_cpu_gemm::set_matmul_tier`): forward and
//! backward-input against an f64 product of the bf16-rounded activations and dequantized
//! weight, on every bf16 tier this machine has (the tiers it lacks are printed, not claimed).
//! One test per process state: the tier is process-wide, so this file holds one test.

use burn::tensor::{Device, Tensor, TensorData};
use qlora_backend::{Nf4Weight, nf4_linear, nf4_linear_backward_input};
use qlora_cpu_gemm::{Tier, matmul_tier, round_bf16, set_matmul_tier};
use qlora_nf4::{QuantConfig, QuantizedTensor};

/// Deterministic values in [-2, 2).
fn values(len: usize, seed: u64) -> Vec<f32> {
    qlora_testenv::random::uniform(len, seed)
        .into_iter()
        .map(|v| 2.0 * v)
        .collect()
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `got[i, j]` against `Σ_kk bf16(a[i, kk]) · bf16(b(kk, j))` in f64, within f32
/// accumulation's error over `k` terms.
fn check(
    got: &[f32],
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: impl Fn(usize, usize) -> f32,
    what: &str,
) {
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let p = round_bf16(a[i * k + kk]) as f64 * round_bf16(b(kk, j)) as f64;
                exact += p;
                mag += p.abs();
            }
            let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
            let g = got[i * n + j] as f64;
            assert!(
                (g - exact).abs() <= tol,
                "{what}: [{i},{j}] = {g}, exact over bf16 inputs {exact}, tol {tol}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn nf4_linear_with_bf16_compute_matches_the_rounded_reference_on_every_tier_here() {
    let tiers: Vec<Tier> = Tier::BF16.into_iter().filter(|t| t.available()).collect();
    assert!(
        !tiers.is_empty(),
        "the CPU reports bf16 instructions, yet no bf16 tier is usable here (AMX refused by the OS and no AVX512-BF16?)"
    );
    let absent: Vec<&str> = Tier::BF16
        .into_iter()
        .filter(|t| !t.available())
        .map(Tier::name)
        .collect();
    eprintln!(
        "bf16 nf4_linear: tiers exercised {:?}; not on this machine (not tested) {absent:?}",
        tiers.iter().map(|t| t.name()).collect::<Vec<_>>()
    );
    let device = Device::flex();
    // m ≥ 64 (the many-rows path); K and N odd, not multiples of 32, and past one reduction
    // chunk (1024) in each direction.
    let shapes = [(64, 129, 256), (70, 33, 1100), (100, 1100, 45), (65, 1, 37)];
    for tier in tiers {
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            let w = values(n * k, 10 + s as u64);
            let q = QuantizedTensor::quantize("w", &w, &[n, k], QuantConfig::qlora()).unwrap();
            let deq = q.dequantize_f32();
            let nf4 = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
            let x = values(m * k, 20 + s as u64);
            let dy = values(m * n, 30 + s as u64);
            let run = |t: Tier| {
                set_matmul_tier(t);
                let y = to_vec(nf4_linear(
                    Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device),
                    &nf4,
                ));
                let dx = to_vec(nf4_linear_backward_input(
                    Tensor::<2>::from_data(TensorData::new(dy.clone(), [m, n]), &device),
                    &nf4,
                ));
                (y, dx)
            };
            let (y, dx) = run(tier);
            let (y32, dx32) = run(Tier::F32);
            let what = format!("{tier} {m}x{n}x{k}");
            check(
                &y,
                (m, n, k),
                &x,
                |kk, j| deq[j * k + kk],
                &format!("y {what}"),
            );
            check(
                &dx,
                (m, k, n),
                &dy,
                |r, c| deq[r * k + c],
                &format!("dx {what}"),
            );
            // The bf16 path ran (the f32 path keeps full precision, so it differs).
            assert_ne!(y, y32, "y {what}: the bf16 path was not taken");
            assert_ne!(dx, dx32, "dx {what}: the bf16 path was not taken");
        }
    }
    assert_eq!(matmul_tier(), Tier::F32);
}
