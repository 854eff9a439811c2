//! Comparing logits with a reference, shared by the golden tests through `#[path]`.
#![allow(dead_code)]

use burn::tensor::Tensor;

/// The values of `t` as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// max |a - b| / max |b|: relative to the tensor's scale (logits cross zero everywhere); panics
/// on a non-finite value (`qlora_testenv::compare`).
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    qlora_testenv::compare::rel_err(a, b, "logits")
}

/// Asserts `rel_err(got, want) <= tol`, printing the error; fails on a non-finite value.
pub fn check(name: &str, got: Vec<f32>, want: &[f32], tol: f32) {
    let e = qlora_testenv::compare::rel_err(&got, want, name);
    eprintln!("{name}: relative error {e:e}");
    assert!(e <= tol, "{name}: relative error {e:e} > {tol:e}");
}

/// The f32 values of tensor `key` of a safetensors file.
pub fn st_f32s(st: &safetensors::SafeTensors<'_>, key: &str) -> Vec<f32> {
    st.tensor(key)
        .unwrap_or_else(|_| panic!("no tensor {key}"))
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The int64 values and shape of tensor `key` of a safetensors file.
pub fn st_i64s(st: &safetensors::SafeTensors<'_>, key: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("no tensor {key}"));
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}
