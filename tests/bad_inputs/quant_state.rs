//! Malformed bnb-4bit checkpoints: the golden NF4 + double-quant tiny LLaMA with one weight's
//! `quant_state` JSON or companion tensors broken.

use std::path::Path;

use serde_json::{Value, json};

use crate::{Case, copy_fixture, drop_tensor, load_model, replace_tensor, tensor_bytes};

const W: &str = "model.layers.0.mlp.down_proj.weight";

fn qs_key() -> String {
    format!("{W}.quant_state.bitsandbytes__nf4")
}

/// A copy of the NF4 tiny LLaMA with `f` applied to its `model.safetensors`.
fn nf4(dir: &Path, f: impl FnOnce(&Path)) -> Result<(), String> {
    copy_fixture("tiny-llama-nf4", dir);
    f(&dir.join("model.safetensors"));
    load_model(dir)
}

/// Rewrites the quant_state JSON of `W` with `f`.
fn edit_state(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let key = qs_key();
    let mut v: Value = serde_json::from_slice(&tensor_bytes(path, &key)).unwrap();
    f(v.as_object_mut().unwrap());
    let bytes = serde_json::to_vec(&v).unwrap();
    let n = bytes.len();
    replace_tensor(path, &key, "U8", &[n], bytes);
}

fn state_case(
    name: &'static str,
    want: &'static [&'static str],
    f: impl FnOnce(&mut serde_json::Map<String, Value>) + 'static,
) -> Case {
    Case::new(name, want, move |d| nf4(d, |p| edit_state(p, f)))
}

pub fn cases() -> Vec<Case> {
    vec![
        state_case("qs-missing-blocksize", &["quant_state", "blocksize"], |m| {
            m.remove("blocksize");
        }),
        state_case("qs-missing-shape", &["quant_state", "shape"], |m| {
            m.remove("shape");
        }),
        state_case(
            "qs-bad-blocksize",
            &["quant_state", "blocksize", "100"],
            |m| {
                m.insert("blocksize".into(), json!(100));
            },
        ),
        state_case("qs-unknown-quant-type", &["quant_state", "nf5"], |m| {
            m.insert("quant_type".into(), json!("nf5"));
        }),
        state_case(
            "qs-type-disagrees-with-key",
            &["quant_state", "fp4", "key"],
            |m| {
                m.insert("quant_type".into(), json!("fp4"));
            },
        ),
        state_case("qs-shape-disagrees-with-bytes", &[W, "packed bytes"], |m| {
            m.insert("shape".into(), json!([64, 100]));
        }),
        state_case("qs-huge-shape", &["quant_state", "shape"], |m| {
            m.insert("shape".into(), json!([u64::MAX, 4]));
        }),
        state_case(
            "qs-missing-nested-offset",
            &["quant_state", "nested_offset"],
            |m| {
                m.remove("nested_offset");
            },
        ),
        Case::new("qs-not-json", &["quant_state", "JSON"], |d| {
            nf4(d, |p| {
                replace_tensor(p, &qs_key(), "U8", &[5], b"{nope".to_vec())
            })
        }),
        Case::new("qs-absmax-wrong-length", &[".absmax", "172"], |d| {
            nf4(d, |p| {
                replace_tensor(p, &format!("{W}.absmax"), "U8", &[100], vec![0; 100])
            })
        }),
        Case::new("qs-absmax-missing", &[".absmax", "missing"], |d| {
            nf4(d, |p| drop_tensor(p, &format!("{W}.absmax")))
        }),
        Case::new("qs-quant-map-missing", &[".quant_map", "missing"], |d| {
            nf4(d, |p| drop_tensor(p, &format!("{W}.quant_map")))
        }),
        Case::new(
            "qs-quant-map-wrong-values",
            &[".quant_map", "quant_map values"],
            |d| {
                nf4(d, |p| {
                    let key = format!("{W}.quant_map");
                    let mut b = tensor_bytes(p, &key);
                    b[4..8].copy_from_slice(&0.5f32.to_le_bytes());
                    replace_tensor(p, &key, "F32", &[16], b)
                })
            },
        ),
        Case::new("qs-nested-absmax-wrong-length", &[".nested_absmax"], |d| {
            nf4(d, |p| {
                let key = format!("{W}.nested_absmax");
                replace_tensor(p, &key, "F32", &[3], vec![0; 12])
            })
        }),
        Case::new("qs-packed-weight-wrong-dtype", &[W, "U8"], |d| {
            nf4(d, |p| {
                let b = tensor_bytes(p, W);
                let n = b.len() / 4;
                replace_tensor(p, W, "F32", &[n], b[..4 * n].to_vec())
            })
        }),
        Case::new(
            "qs-state-shape-disagrees-with-config",
            &["model.layers.0.mlp.", "172", "200"],
            |d| {
                copy_fixture("tiny-llama-nf4", d);
                crate::model_files::edit_config(d, |m| {
                    m.insert("intermediate_size".into(), json!(200));
                });
                load_model(d)
            },
        ),
    ]
}
