//! Comparing a result with its reference, for every numeric test of the workspace.
//!
//! A maximum folded with `f32::max` skips NaN (`1.0f32.max(NAN) == 1.0`), so an all-NaN output
//! would compare as error 0 and pass. Every helper here panics on a non-finite value in either
//! slice instead, naming the comparison, the side and the index, and on a length mismatch: a
//! comparison that cannot fail is no test.

/// Panics if `xs` holds a non-finite value (`side` is `"result"` or `"reference"`).
fn finite(xs: &[f32], what: &str, side: &str) {
    if let Some((i, x)) = xs.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        panic!("{what}: non-finite value {x} at index {i} of the {side}");
    }
}

/// Panics unless both are finite and of one length.
fn comparable(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values against a reference of {}",
        got.len(),
        want.len()
    );
    finite(got, what, "result");
    finite(want, what, "reference");
}

/// The largest `|x|`; panics on a non-finite value.
pub fn max_abs(xs: &[f32], what: &str) -> f32 {
    finite(xs, what, "values");
    xs.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// `max |got − want|`; panics on a non-finite value or a length mismatch.
pub fn max_abs_diff(got: &[f32], want: &[f32], what: &str) -> f32 {
    comparable(got, want, what);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// `max |got − want| / max |want|`, the error relative to the reference's scale (logits and
/// gradients cross zero everywhere, so an element-wise relative error means nothing); an
/// all-zero reference gives 0 if `got` is all zero too, else infinity. Panics on a non-finite
/// value or a length mismatch.
pub fn rel_err(got: &[f32], want: &[f32], what: &str) -> f32 {
    let diff = max_abs_diff(got, want, what);
    let scale = max_abs(want, what);
    if diff == 0.0 {
        0.0
    } else if scale == 0.0 {
        f32::INFINITY
    } else {
        diff / scale
    }
}

/// Asserts every `|got − want|` within `rel` times the largest `|want|` (element by element,
/// naming the first index off); panics on a non-finite value or a length mismatch.
pub fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    comparable(got, want, what);
    let scale = max_abs(want, what);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= rel * scale,
            "{what}[{i}]: {a} vs {b} (allowed {rel:e} × scale {scale})"
        );
    }
}

/// [`assert_close`] against an f64 reference (compared in f64).
pub fn assert_close_f64(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    finite(got, what, "result");
    if let Some((i, x)) = want.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        panic!("{what}: non-finite value {x} at index {i} of the reference");
    }
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a as f64 - b).abs() <= rel * scale,
            "{what}[{i}]: {a} vs {b} (allowed {rel:e} × scale {scale})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "non-finite value NaN at index 0 of the result")]
    fn an_all_nan_result_fails_the_relative_error() {
        rel_err(&[f32::NAN; 4], &[1.0, -2.0, 3.0, 0.5], "logits");
    }

    #[test]
    #[should_panic(expected = "non-finite value NaN at index 2 of the reference")]
    fn a_nan_in_the_reference_fails() {
        max_abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.0, f32::NAN], "grad");
    }

    #[test]
    #[should_panic(expected = "non-finite value inf at index 1 of the result")]
    fn an_infinite_result_fails_assert_close() {
        assert_close(&[1.0, f32::INFINITY], &[1.0, 1.0], 1.0, "y");
    }

    #[test]
    #[should_panic(expected = "non-finite value NaN at index 0 of the result")]
    fn a_nan_fails_the_f64_comparison() {
        assert_close_f64(&[f32::NAN], &[0.0], 1.0, "y");
    }

    #[test]
    #[should_panic(expected = "non-finite value NaN at index 1 of the values")]
    fn a_nan_fails_max_abs() {
        max_abs(&[1.0, f32::NAN], "scale");
    }

    #[test]
    #[should_panic(expected = "3 values against a reference of 2")]
    fn a_length_mismatch_fails() {
        rel_err(&[1.0, 2.0, 3.0], &[1.0, 2.0], "x");
    }

    #[test]
    fn finite_values_compare_as_before() {
        assert_eq!(rel_err(&[1.0, 2.5], &[1.0, 2.0], "x"), 0.25);
        assert_eq!(rel_err(&[0.0, 0.0], &[0.0, 0.0], "x"), 0.0);
        assert_eq!(rel_err(&[0.0, 1e-9], &[0.0, 0.0], "x"), f32::INFINITY);
        assert_close(&[1.0, 2.001], &[1.0, 2.0], 1e-3, "x");
    }
}
