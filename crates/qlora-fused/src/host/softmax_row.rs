//! One row of the fused cross-entropy's softmax, vectorised: the row's max, `exp(x - max)` in
//! place and its sum, with an `exp` the compiler can vectorise (libm's `expf` is a scalar call,
//! and was a fifth of the LoRA training step on Flex).
//!
//! The `exp` is Cephes' `expf` (Moshier): `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, `exp(r)` by a
//! degree-5 polynomial, `2ⁿ` built in the exponent bits; relative error within 2 ulp of the
//! correctly rounded value over the range used here (`x ≤ 0`, tested against `f64::exp`).
//! Compiled for AVX-512 and AVX2 and chosen at run time, else for the baseline target.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 · 2²³`: adding and subtracting it rounds to the nearest integer (ties to even).
const ROUND: f32 = 12_582_912.0;
const LANES: usize = 16;

/// `exp(x)`, for `x` in `[-87.3, 88.7]` (clamped there; NaN stays NaN).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.722_83);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // `n` as an integer, read off `t`'s low mantissa bits (|n| ≤ 128 ≪ 2²²) rather than by an
    // `as i32` cast, whose saturating semantics LLVM compiles to a scalar conversion per lane.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    e * f32::from_bits(n_int.wrapping_add(127) << 23)
}

#[inline(always)]
fn max_exp_sum(row: &mut [f32]) -> (f32, f32) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            m[j] = m[j].max(c[j]);
        }
    }
    let max = chunks.remainder().iter().fold(
        m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        |a, &b| a.max(b),
    );
    let mut s = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            let e = exp(c[j] - max);
            c[j] = e;
            s[j] += e;
        }
    }
    // The tail as one more vector, padded (attention's causal rows have every length, so a
    // scalar tail would be half of their `exp`s).
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [max; LANES];
        buf[..tail.len()].copy_from_slice(tail);
        for j in 0..LANES {
            let e = exp(buf[j] - max);
            buf[j] = e;
            s[j] += if j < tail.len() { e } else { 0.0 };
        }
        tail.copy_from_slice(&buf[..tail.len()]);
    }
    let sum: f32 = s.iter().sum();
    (max, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn max_exp_sum_avx512(row: &mut [f32]) -> (f32, f32) {
    max_exp_sum(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn max_exp_sum_avx2(row: &mut [f32]) -> (f32, f32) {
    max_exp_sum(row)
}

/// Replaces every `x` of `row` by `exp(x - max)`; returns `(max, Σ exp(x - max))`.
pub(crate) fn softmax_numerators(row: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { max_exp_sum_avx512(row) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { max_exp_sum_avx2(row) };
        }
    }
    max_exp_sum(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).to_bits() as i64 - (got as f32).to_bits() as i64;
            worst = worst.max(ulp.unsigned_abs() as f64);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exponent_bits_equal_the_integer_cast() {
        // `2ⁿ` from `t`'s bits is the `2ⁿ` of `n as i32` over the whole clamped range.
        let mut x = -87.336_55f32;
        while x <= 88.722_83 {
            let n = (x * LOG2E + ROUND) - ROUND;
            let bits = (x * LOG2E + ROUND).to_bits().wrapping_sub(ROUND.to_bits());
            assert_eq!(bits as i32, n as i32, "x = {x}");
            x += 0.013_7;
        }
    }

    #[test]
    fn row_matches_the_scalar_softmax() {
        let mut row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 * 0.21 - 9.0)
            .collect();
        let want_max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let want: Vec<f64> = row.iter().map(|&x| ((x - want_max) as f64).exp()).collect();
        let (max, sum) = softmax_numerators(&mut row);
        assert_eq!(max, want_max);
        let want_sum: f64 = want.iter().sum();
        assert!(((sum as f64) - want_sum).abs() <= 1e-6 * want_sum);
        for (a, b) in row.iter().zip(&want) {
            assert!(((*a as f64) - b).abs() <= 3e-7 * b.max(1e-30), "{a} vs {b}");
        }
    }
}
