//! The bf16 kernels against an f64 product of the same bf16-rounded inputs, on every tier this
//! machine has; tiers it lacks are named as not tested.

use qlora_cpu_gemm::{PackedA, PackedB, Tier, gemm_bf16, gemm_bf16_serial, round_bf16};

/// Deterministic values in [-2, 2), with a few larger and tiny ones.
fn values(len: usize, seed: u64) -> Vec<f32> {
    qlora_testenv::random::uniform(len, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| match i % 97 {
            0 => 100.0 * v,
            1 => 2e-3 * v,
            _ => 2.0 * v,
        })
        .collect()
}

/// The tiers of this machine with a bf16 kernel; prints which were and were not exercised.
fn bf16_tiers(test: &str) -> Vec<Tier> {
    let (here, absent): (Vec<Tier>, Vec<Tier>) =
        Tier::BF16.into_iter().partition(|t| t.available());
    eprintln!(
        "{test}: tiers exercised: [{}]; not on this machine (not tested): [{}]; CPU flags: {:?}",
        here.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        absent
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        Tier::cpu_flags()
    );
    assert!(
        !here.is_empty(),
        "the CPU reports bf16 instructions, yet no bf16 tier is usable here (AMX refused by the OS and no AVX512-BF16?)"
    );
    here
}

/// Checks `out` (row stride `rs`) against `init + A·B` in f64 over bf16-rounded inputs,
/// within what f32 accumulation over `k` terms allows.
#[allow(clippy::too_many_arguments)]
fn check(
    tier: Tier,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    init: &[f32],
    out: &[f32],
    rs: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut mag) = (init[i * rs + j] as f64, init[i * rs + j].abs() as f64);
            for kk in 0..k {
                let p = round_bf16(a[i * k + kk]) as f64 * round_bf16(b[kk * n + j]) as f64;
                exact += p;
                mag += p.abs();
            }
            let got = out[i * rs + j] as f64;
            let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
            assert!(
                (got - exact).abs() <= tol,
                "{tier} m={m} n={n} k={k}: out[{i},{j}] = {got}, exact {exact}, tol {tol}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn bf16_gemm_matches_an_exact_product_of_rounded_inputs_on_awkward_shapes() {
    let shapes = [
        (1, 1, 1),
        (1, 17, 45),
        (1, 576, 64),
        (3, 5, 7),
        (31, 33, 65),
        (32, 32, 32),
        (33, 31, 100),
        (64, 96, 576),
        (70, 1, 33),
        (100, 49, 1537),
    ];
    for tier in bf16_tiers("gemm") {
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            let a = values(m * k, 2 * s as u64 + 1);
            let b = values(k * n, 2 * s as u64 + 2);
            let pa = PackedA::from_f32(&a, m, k, k);
            let pb = PackedB::from_f32(&b, k, n, n, 1);
            // Overwrite, into a wider output whose padding columns must stay untouched.
            let rs = n + 3;
            let mut out = vec![7.5f32; m * rs];
            gemm_bf16(tier, &pa, &pb, &mut out, rs, false);
            check(tier, (m, n, k), &a, &b, &vec![0.0; m * rs], &out, rs);
            for i in 0..m {
                assert!(out[i * rs + n..i * rs + rs].iter().all(|&x| x == 7.5));
            }
            // Accumulate onto what is there.
            let init = values(m * rs, 99);
            let mut acc = init.clone();
            gemm_bf16(tier, &pa, &pb, &mut acc, rs, true);
            check(tier, (m, n, k), &a, &b, &init, &acc, rs);
        }
    }
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn packing_by_columns_rows_or_strides_gives_the_same_operand() {
    let tiers = bf16_tiers("packing");
    let (m, n, k) = (9, 40, 70);
    let a = values(m * k, 5);
    // W [n, k] row-major: B = Wᵀ by strides, by columns (rows of W) and by rows of B.
    let w = values(n * k, 6);
    let bt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    let by_strides = PackedB::from_f32(&w, k, n, 1, k);
    let by_columns = PackedB::from_columns(k, n, |j0, cols| {
        cols.copy_from_slice(&w[j0 * k..j0 * k + cols.len()])
    });
    let by_rows = PackedB::from_rows(k, n, |r0, rows| {
        rows.copy_from_slice(&bt[r0 * n..r0 * n + rows.len()])
    });
    let pa = PackedA::from_f32(&a, m, k, k);
    for tier in tiers {
        let outs: Vec<Vec<f32>> = [&by_strides, &by_columns, &by_rows]
            .iter()
            .map(|pb| {
                let mut out = vec![0f32; m * n];
                gemm_bf16(tier, &pa, pb, &mut out, n, false);
                out
            })
            .collect();
        check(tier, (m, n, k), &a, &bt, &vec![0.0; m * n], &outs[0], n);
        assert_eq!(outs[0], outs[1], "{tier}: by columns");
        assert_eq!(outs[0], outs[2], "{tier}: by rows");
    }
}

#[test]
fn rounding_is_to_nearest_even_and_keeps_nan_and_infinities() {
    assert_eq!(round_bf16(1.0), 1.0);
    // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
    assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
    assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
    assert_eq!(
        round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
        1.0 + 2f32.powi(-7)
    );
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert_eq!(round_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
    // The largest finite f32 rounds to infinity in bf16, as PyTorch's conversion does.
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
}

#[test]
#[should_panic(expected = "not a bf16 kernel")]
fn the_f32_tier_is_refused_as_api_misuse() {
    let pa = PackedA::from_f32(&[1.0], 1, 1, 1);
    let pb = PackedB::from_f32(&[1.0], 1, 1, 1, 1);
    gemm_bf16(Tier::F32, &pa, &pb, &mut [0.0], 1, false);
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn serial_product_over_a_view_of_b_matches_the_product_of_that_part() {
    // B [kb, nb]; views from rows k0 and columns j0 (multiples of 32), A as deep as some or all
    // of the rows left (past B's depth: its zero padding), N odd, M = 1 and past one block.
    let (kb, nb) = (150, 100);
    let b = values(kb * nb, 11);
    let pb = PackedB::from_f32(&b, kb, nb, nb, 1);
    let cases = [
        (1, 0, 0, 100, 150),
        (70, 32, 64, 35, 118),
        (33, 128, 32, 1, 22),
        (64, 128, 0, 67, 30),
    ];
    for tier in bf16_tiers("serial view") {
        for (s, &(m, k0, j0, n, k)) in cases.iter().enumerate() {
            let a = values(m * k, 40 + s as u64);
            let pa = PackedA::from_f32(&a, m, k, k);
            // The part of B the view multiplies: rows k0.., columns j0.. (zero past B's rows).
            let part: Vec<f32> = (0..k * n)
                .map(|e| {
                    let (kk, j) = (k0 + e / n, j0 + e % n);
                    if kk < kb { b[kk * nb + j] } else { 0.0 }
                })
                .collect();
            let rs = n + 2;
            let init = values(m * rs, 77);
            for accumulate in [false, true] {
                let mut out = init.clone();
                gemm_bf16_serial(tier, &pa, pb.view(k0, j0, n), &mut out, rs, accumulate);
                let base = if accumulate {
                    init.clone()
                } else {
                    vec![0.0; m * rs]
                };
                check(tier, (m, n, k), &a, &part, &base, &out, rs);
                for i in 0..m {
                    assert_eq!(
                        &out[i * rs + n..i * rs + rs],
                        &init[i * rs + n..i * rs + rs]
                    );
                }
            }
        }
    }
}
