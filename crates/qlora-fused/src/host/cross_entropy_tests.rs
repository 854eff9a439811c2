//! The fused head + cross-entropy with bf16 products against an f64 reference over the same
//! bf16-rounded operands, on every bf16 tier this machine has (the others are printed as not
//! tested). The tier is process-wide: this is the crate's only test that sets it.

use qlora_cpu_gemm::{Tier, round_bf16, set_matmul_tier};

use super::cross_entropy::{CeInputs, linear_cross_entropy, linear_cross_entropy_with_grad};

fn values(len: usize, seed: u64) -> Vec<f32> {
    qlora_testenv::random::uniform(len, seed)
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn bf16_head_matches_the_rounded_reference_on_every_tier_here() {
    let tiers: Vec<Tier> = Tier::BF16.into_iter().filter(|t| t.available()).collect();
    assert!(
        !tiers.is_empty(),
        "the CPU reports bf16 instructions, yet no bf16 tier is usable here (AMX refused by the OS and no AVX512-BF16?)"
    );
    eprintln!(
        "bf16 head: tiers exercised {:?}; not on this machine (not tested) {:?}",
        tiers.iter().map(|t| t.name()).collect::<Vec<_>>(),
        Tier::BF16
            .iter()
            .filter(|t| !t.available())
            .map(|t| t.name())
            .collect::<Vec<_>>()
    );
    // 300 rows (past the bf16 threshold of 256), odd vocabulary and features.
    let (n, h, v) = (300, 45, 77);
    let x = values(n * h, 1);
    let w = values(v * h, 2);
    let targets: Vec<i64> = (0..n).map(|i| (i * 31 % v) as i64).collect();
    let weights: Vec<f32> = (0..n).map(|i| if i % 7 == 0 { 0.0 } else { 0.5 }).collect();
    let inp = CeInputs {
        x: &x,
        w: &w,
        targets: &targets,
        weights: &weights,
        h,
        v,
    };
    // The reference: logits over bf16 inputs in f64, the weighted loss and its gradient
    // (dlogits rounded to bf16, as the kernel rounds them, before the product with W).
    let mut want_loss = vec![0f64; n];
    let mut want_dx = vec![0f64; n * h];
    let mut dx_mag = vec![0f64; n * h];
    for i in 0..n {
        let logits: Vec<f64> = (0..v)
            .map(|j| {
                (0..h)
                    .map(|k| round_bf16(x[i * h + k]) as f64 * round_bf16(w[j * h + k]) as f64)
                    .sum()
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        let a = weights[i] as f64;
        want_loss[i] = a * (max + sum.ln() - logits[targets[i] as usize]);
        for j in 0..v {
            let mut g = a * (logits[j] - max).exp() / sum;
            if j == targets[i] as usize {
                g -= a;
            }
            for k in 0..h {
                let p = g * round_bf16(w[j * h + k]) as f64;
                want_dx[i * h + k] += p;
                dx_mag[i * h + k] += p.abs();
            }
        }
    }
    for tier in tiers {
        set_matmul_tier(tier);
        let loss = linear_cross_entropy(&inp);
        let (loss2, dx) = linear_cross_entropy_with_grad(&inp);
        set_matmul_tier(Tier::F32);
        let (loss32, _) = linear_cross_entropy_with_grad(&inp);
        assert_eq!(loss, loss2, "{tier}: the two entry points agree");
        assert_ne!(loss, loss32, "{tier}: the bf16 path was not taken");
        for i in 0..n {
            assert!(
                (loss[i] as f64 - want_loss[i]).abs() <= 1e-5 * (1.0 + want_loss[i].abs()),
                "{tier}: loss[{i}] {} vs {}",
                loss[i],
                want_loss[i]
            );
        }
        // dlogits are rounded to bf16 (8 bits): within 2^-8 of each term's magnitude.
        for (e, ((&g, &r), &m)) in dx.iter().zip(&want_dx).zip(&dx_mag).enumerate() {
            assert!(
                (g as f64 - r).abs() <= m / 256.0 + 1e-7,
                "{tier}: dx[{e}] {g} vs {r} (terms {m})"
            );
        }
    }
}
