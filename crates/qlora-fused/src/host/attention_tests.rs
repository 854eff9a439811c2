//! The host attention kernels against the definition in f64 and central differences.

use super::*;
use qlora_cpu_gemm::Tier;

/// The definition, in f64: scores, mask, softmax, weighted sum.
fn reference(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    reference_segmented(s, None, q, k, v)
}

/// [`reference`] with each query's keys cut at its segment start.
fn reference_segmented(
    s: &AttnShape,
    starts: Option<&[i64]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f64> {
    let mut out = vec![0f64; s.b * s.h * s.tq * s.dv];
    for bi in 0..s.b {
        for hi in 0..s.h {
            let kv = bi * s.kvh + hi / (s.h / s.kvh);
            for i in 0..s.tq {
                let qi = &q[((bi * s.h + hi) * s.tq + i) * s.d..][..s.d];
                let seen = s.visible(i);
                let own = starts.map_or(0, |st| st[bi * s.tq + i] as usize);
                let first = s.first(i).max(own).min(seen);
                let sc: Vec<f64> = (first..seen)
                    .map(|j| {
                        let kj = &k[(kv * s.tk + j) * s.d..][..s.d];
                        s.scale as f64
                            * qi.iter()
                                .zip(kj)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                let o = &mut out[((bi * s.h + hi) * s.tq + i) * s.dv..][..s.dv];
                for (jj, x) in sc.iter().enumerate() {
                    let j = first + jj;
                    let w = (x - m).exp() / z;
                    for c in 0..s.dv {
                        o[c] += w * v[(kv * s.tk + j) * s.dv + c] as f64;
                    }
                }
            }
        }
    }
    out
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn forward_matches_the_definition_across_blocks_groups_and_offsets() {
    // tq 130 crosses two block edges; tk > tq (a cache); 6 heads over 2 kv heads; tq > tk
    // rows with no key give 0; sliding windows narrower than a block, wider than one, and
    // over a cache.
    for (tq, tk, h, kvh, window) in [
        (130, 130, 6, 2, None),
        (70, 200, 4, 4, None),
        (3, 1, 2, 1, None),
        (130, 130, 6, 2, Some(17)),
        (130, 130, 2, 1, Some(100)),
        (70, 200, 4, 4, Some(90)),
        (1, 12, 2, 1, Some(3)),
    ] {
        let s = AttnShape {
            b: 2,
            h,
            kvh,
            tq,
            tk,
            d: 8,
            dv: 5,
            scale: 0.35,
            window,
        };
        let q = data(s.b * h * tq * s.d, 1);
        let k = data(s.b * kvh * tk * s.d, 2);
        let v = data(s.b * kvh * tk * s.dv, 3);
        let got = attention_forward(&s, None, &q, &k, &v, Tier::F32);
        let want = reference(&s, &q, &k, &v);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{tq}x{tk}: {g} vs {w}");
        }
    }
}

/// Segment starts `[b, len]` of samples with these lengths, one row per batch entry.
fn starts_of(rows: &[&[usize]]) -> Vec<i64> {
    let mut out = Vec::new();
    for lens in rows {
        let mut at = 0;
        for &n in *lens {
            out.extend(std::iter::repeat_n(at as i64, n));
            at += n;
        }
    }
    out
}

#[test]
fn segmented_forward_matches_the_definition() {
    // Samples across block edges, a one-token sample, and a window inside samples.
    let starts = starts_of(&[&[40, 1, 59, 30], &[77, 53]]);
    for (h, kvh, window) in [(6, 2, None), (4, 4, Some(17)), (2, 1, Some(100))] {
        let s = AttnShape {
            b: 2,
            h,
            kvh,
            tq: 130,
            tk: 130,
            d: 8,
            dv: 5,
            scale: 0.35,
            window,
        };
        let q = data(s.b * h * s.tq * s.d, 1);
        let k = data(s.b * kvh * s.tk * s.d, 2);
        let v = data(s.b * kvh * s.tk * s.dv, 3);
        let got = attention_forward(&s, Some(&starts), &q, &k, &v, Tier::F32);
        let want = reference_segmented(&s, Some(&starts), &q, &k, &v);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{window:?}: {g} vs {w}");
        }
    }
}

#[test]
fn segmented_backward_matches_central_differences() {
    let starts = starts_of(&[&[25, 1, 44]]);
    for window in [None, Some(9)] {
        let s = AttnShape {
            b: 1,
            h: 4,
            kvh: 2,
            tq: 70,
            tk: 70,
            d: 6,
            dv: 4,
            scale: 0.4,
            window,
        };
        backward_case_with(s, Some(&starts));
    }
}

#[test]
fn backward_matches_central_differences() {
    for window in [None, Some(9)] {
        backward_case(AttnShape {
            b: 1,
            h: 4,
            kvh: 2,
            tq: 70,
            tk: 70,
            d: 6,
            dv: 4,
            scale: 0.4,
            window,
        });
    }
}

fn backward_case(s: AttnShape) {
    backward_case_with(s, None)
}

fn backward_case_with(s: AttnShape, starts: Option<&[i64]>) {
    let q = data(s.h * s.tq * s.d, 4);
    let k = data(s.kvh * s.tk * s.d, 5);
    let v = data(s.kvh * s.tk * s.dv, 6);
    let g = data(s.h * s.tq * s.dv, 7);
    let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
        let o = reference_segmented(&s, starts, q, k, v);
        o.iter().zip(&g).map(|(a, b)| a * *b as f64).sum()
    };
    let (dq, dk, dv) = attention_backward(&s, starts, &q, &k, &v, &g, Tier::F32);
    let eps = 1e-2f32;
    let probe = |which: usize, idx: usize| -> f64 {
        let mut t = [q.clone(), k.clone(), v.clone()];
        t[which][idx] += eps;
        let up = loss(&t[0], &t[1], &t[2]);
        t[which][idx] -= 2.0 * eps;
        let down = loss(&t[0], &t[1], &t[2]);
        (up - down) / (2.0 * eps as f64)
    };
    for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
        for idx in (0..grad.len()).step_by(grad.len() / 23 + 1) {
            let want = probe(which, idx);
            let got = grad[idx] as f64;
            assert!(
                (got - want).abs() < 2e-3 * (1.0 + want.abs()),
                "window {:?}: input {which}[{idx}]: {got} vs {want}",
                s.window
            );
        }
    }
}

/// The largest `|x|`.
fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, b| a.max(b.abs()))
}

#[test]
#[cfg_attr(
    qlora_no_cpu_bf16,
    ignore = "not on this CPU: no AVX512-BF16 or AMX, so no bf16 kernel to test"
)]
fn bf16_products_match_the_definition_and_the_f32_gradients_within_bf16_rounding() {
    let (tiers, absent): (Vec<Tier>, Vec<Tier>) =
        Tier::BF16.into_iter().partition(|t| t.available());
    eprintln!(
        "bf16 attention: tiers exercised {:?}; not on this machine (not tested) {:?}",
        tiers.iter().map(|t| t.name()).collect::<Vec<_>>(),
        absent.iter().map(|t| t.name()).collect::<Vec<_>>()
    );
    assert!(
        !tiers.is_empty(),
        "the CPU reports bf16, yet no bf16 tier is usable"
    );
    let segments = starts_of(&[&[40, 1, 59, 30], &[77, 53]]);
    // Widths that are not multiples of 32; three query blocks; a cache (tk > tq); windows that
    // start blocks at keys that are not multiples of 32; padding-free segments.
    type Case<'a> = (usize, usize, usize, usize, Option<usize>, Option<&'a [i64]>);
    let cases: [Case; 5] = [
        (130, 130, 6, 2, None, None),
        (70, 200, 4, 4, Some(90), None),
        (130, 130, 6, 2, Some(17), None),
        (130, 130, 4, 2, None, Some(&segments)),
        (130, 130, 2, 1, Some(45), Some(&segments)),
    ];
    for tier in tiers {
        for &(tq, tk, h, kvh, window, starts) in &cases {
            let s = AttnShape {
                b: 2,
                h,
                kvh,
                tq,
                tk,
                d: 40,
                dv: 24,
                scale: 1.0 / 40f32.sqrt(),
                window,
            };
            let what = format!(
                "{tier} {tq}x{tk} h{h}/{kvh} window {window:?} segments {}",
                starts.is_some()
            );
            let q = data(s.b * h * tq * s.d, 11);
            let k = data(s.b * kvh * tk * s.d, 12);
            let v = data(s.b * kvh * tk * s.dv, 13);
            let got = attention_forward(&s, starts, &q, &k, &v, tier);
            let want = reference_segmented(&s, starts, &q, &k, &v);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0f64, f64::max);
            // bf16 operands (8 bits of mantissa) on values within [-1, 1]: errors up to 3e-3
            // here; a scale 5 % off already gives 1.4e-2, a wrong mask or key offset tenths.
            assert!(worst < 6e-3, "{what}: forward off by {worst}");
            assert!(
                worst > 0.0,
                "{what}: forward identical to f64: bf16 not used?"
            );
            let g = data(s.b * h * tq * s.dv, 14);
            let bf = attention_backward(&s, starts, &q, &k, &v, &g, tier);
            let f32s = attention_backward(&s, starts, &q, &k, &v, &g, Tier::F32);
            for (name, got, want) in [
                ("dq", &bf.0, &f32s.0),
                ("dk", &bf.1, &f32s.1),
                ("dv", &bf.2, &f32s.2),
            ] {
                let tol = 2e-2 * peak(want);
                for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (a - b).abs() <= tol,
                        "{what}: {name}[{i}] {a} vs f32 {b} (tol {tol})"
                    );
                }
            }
        }
    }
}
