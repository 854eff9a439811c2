//! Fixture access shared by the golden tests.

use std::path::PathBuf;

use qlora_nf4::bf16;
use safetensors::{Dtype, SafeTensors};

/// The bytes of `tests/fixtures/golden/<name>`.
pub fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading fixture {}: {e}", p.display()))
}

/// The values of an F32 or BF16 tensor, as f32.
pub fn f32s(st: &SafeTensors, key: &str) -> Vec<f32> {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
    match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        d => panic!("{key}: unexpected dtype {d:?}"),
    }
}
