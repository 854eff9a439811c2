//! The fused QLoRA linear with bf16 compute (`qlora_cpu_gemm::set_matmul_tier`): on a bf16
//! tier the adapter's `x · Aᵀ` multiplies the bf16 chunks of `x` the base product packed, and
//! its `dy · B` those of `dy` the base's input gradient packed. Output and the gradients of
//! `x`, `A` and `B` against an f64 reference that rounds exactly the operands the kernels
//! round (and no others), within f32 accumulation's error, on every bf16 tier this machine
//! has (the tiers it lacks are printed, not claimed). One test: the tier is process-wide.

use burn::tensor::{Device, Distribution, Int, Tensor};
use qlora_backend::{QuantConfig, nf4_dequantize};
use qlora_cpu_gemm::{Tier, round_bf16, set_matmul_tier};
use qlora_nn::{InitLoraWeights, LoraAdapter, QLoraLinear};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn b16(v: f32) -> f64 {
    round_bf16(v) as f64
}

/// A dense `[m, n]` reference: values and the magnitudes `Σ |terms|` that bound their error.
struct Reference {
    value: Vec<f64>,
    mag: Vec<f64>,
}

/// `Σ_kk f(i, kk, j)` over `k` terms for each `[m, n]` element, with its magnitude.
fn reduce(m: usize, n: usize, k: usize, f: impl Fn(usize, usize, usize) -> f64) -> Reference {
    let (mut value, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
    for i in 0..m {
        for j in 0..n {
            for kk in 0..k {
                let t = f(i, kk, j);
                value[i * n + j] += t;
                mag[i * n + j] += t.abs();
            }
        }
    }
    Reference { value, mag }
}

fn check(got: &[f32], want: &Reference, terms: usize, what: &str) {
    assert_eq!(got.len(), want.value.len(), "{what}: length");
    for (idx, (&g, (&w, &mag))) in got.iter().zip(want.value.iter().zip(&want.mag)).enumerate() {
        let tol = 2.0 * (terms as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}[{idx}] = {g}, reference {w}, tol {tol}"
        );
    }
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn fused_layer_with_bf16_compute_matches_the_rounded_reference_on_every_tier_here() {
    let tiers: Vec<Tier> = Tier::BF16.into_iter().filter(|t| t.available()).collect();
    assert!(
        !tiers.is_empty(),
        "the CPU reports bf16 instructions, yet no bf16 tier is usable here"
    );
    let absent: Vec<&str> = Tier::BF16
        .into_iter()
        .filter(|t| !t.available())
        .map(Tier::name)
        .collect();
    eprintln!(
        "bf16 fused QLoRA linear: tiers exercised {:?}; not on this machine (not tested) {absent:?}",
        tiers.iter().map(|t| t.name()).collect::<Vec<_>>()
    );
    let device = Device::flex().autodiff();
    // 70 rows (the NF4 kernels' many-rows path); odd widths; an input past one reduction
    // chunk (1024) and an output past one (the backward's chunks of `dy`).
    let cases = [
        ([96usize, 72usize], 8usize),
        ([1100, 40], 4),
        ([40, 1030], 5),
    ];
    for tier in tiers {
        set_matmul_tier(tier);
        for &([inp, out], r) in &cases {
            let what = format!("{tier} [{inp}, {out}] r {r}");
            let base = burn::nn::LinearConfig::new(inp, out)
                .with_bias(false)
                .init(&device);
            let mut layer = QLoraLinear::quantize("proj", base, QuantConfig::qlora()).unwrap();
            let s = 1.37;
            layer.lora.add(
                "default",
                LoraAdapter::new([inp, out], r, s, 0.0, InitLoraWeights::Random, &device),
            );
            let x = Tensor::<3>::random([2, 35, inp], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let y = layer.forward(x.clone());
            let m = 70;
            let dyt = Tensor::<1, Int>::arange(0..(m * out) as i64, &device)
                .float()
                .reshape([2, 35, out])
                .mul_scalar(0.01)
                .cos();
            let grads = (y.clone() * dyt.clone()).sum().backward();
            let (_, ad) = layer.lora.unmerged_active().next().unwrap();
            let (xv, w) = (values(x.clone()), values(nf4_dequantize(&layer.base)));
            let (a, b) = (values(ad.lora_a.val()), values(ad.lora_b.val()));
            let dy = values(dyt);
            let h = reduce(m, r, inp, |i, kk, q| {
                s * b16(xv[i * inp + kk]) * b16(a[q * inp + kk])
            });
            let dh = reduce(m, r, out, |i, j, q| {
                s * b16(dy[i * out + j]) * b16(b[j * r + q])
            });
            // y: the base over bf16 operands, then h (f32) · Bᵀ (f32).
            let yb = reduce(m, out, inp, |i, kk, j| {
                b16(xv[i * inp + kk]) * b16(w[j * inp + kk])
            });
            let ya = reduce(m, out, r, |i, q, j| {
                h.value[i * r + q] * b[j * r + q] as f64
            });
            let ya_mag = reduce(m, out, r, |i, q, j| h.mag[i * r + q] * b[j * r + q] as f64);
            let y_ref = Reference {
                value: yb.value.iter().zip(&ya.value).map(|(p, q)| p + q).collect(),
                mag: (0..m * out).map(|e| yb.mag[e] + ya_mag.mag[e]).collect(),
            };
            check(&values(y), &y_ref, inp + r, &format!("{what}: y"));
            let dxb = reduce(m, inp, out, |i, j, kk| {
                b16(dy[i * out + j]) * b16(w[j * inp + kk])
            });
            let dxa = reduce(m, inp, r, |i, q, kk| {
                dh.value[i * r + q] * a[q * inp + kk] as f64
            });
            let dxa_mag = reduce(m, inp, r, |i, q, kk| {
                dh.mag[i * r + q] * a[q * inp + kk] as f64
            });
            let dx_ref = Reference {
                value: dxb
                    .value
                    .iter()
                    .zip(&dxa.value)
                    .map(|(p, q)| p + q)
                    .collect(),
                mag: (0..m * inp).map(|e| dxb.mag[e] + dxa_mag.mag[e]).collect(),
            };
            check(
                &values(x.grad(&grads).unwrap()),
                &dx_ref,
                out + r,
                &format!("{what}: dx"),
            );
            let da = reduce(r, inp, m, |q, i, kk| {
                dh.value[i * r + q] * xv[i * inp + kk] as f64
            });
            let da_mag = reduce(r, inp, m, |q, i, kk| {
                dh.mag[i * r + q] * xv[i * inp + kk] as f64
            });
            let da_ref = Reference {
                value: da.value,
                mag: da_mag.mag,
            };
            check(
                &values(ad.lora_a.grad(&grads).unwrap()),
                &da_ref,
                out + m,
                &format!("{what}: dA"),
            );
            let db = reduce(out, r, m, |j, i, q| {
                dy[i * out + j] as f64 * h.value[i * r + q]
            });
            let db_mag = reduce(out, r, m, |j, i, q| {
                dy[i * out + j] as f64 * h.mag[i * r + q]
            });
            let db_ref = Reference {
                value: db.value,
                mag: db_mag.mag,
            };
            check(
                &values(ad.lora_b.grad(&grads).unwrap()),
                &db_ref,
                inp + m,
                &format!("{what}: dB"),
            );
        }
    }
    set_matmul_tier(Tier::F32);
}
