//! Malformed `model.safetensors` files of the golden tiny LLaMA.

use std::path::Path;

use serde_json::json;

use crate::{Case, copy_fixture, edit_header, join_safetensors, load_model};

const FILE: &str = "model.safetensors";

/// A copy of the tiny LLaMA whose `model.safetensors` bytes are replaced by `f(bytes)`.
fn with_bytes(dir: &Path, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Result<(), String> {
    copy_fixture("tiny-llama", dir);
    let p = dir.join(FILE);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, f(bytes)).unwrap();
    load_model(dir)
}

/// A copy of the tiny LLaMA whose safetensors header is edited by `f`.
fn with_header(
    dir: &Path,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<(), String> {
    copy_fixture("tiny-llama", dir);
    edit_header(&dir.join(FILE), f);
    load_model(dir)
}

const NORM: &str = "model.norm.weight";

pub fn cases() -> Vec<Case> {
    vec![
        Case::new("st-truncated", &[FILE, "outside the data section"], |d| {
            with_bytes(d, |b| b[..b.len() - 1000].to_vec())
        }),
        Case::new("st-three-bytes", &[FILE, "too short"], |d| {
            with_bytes(d, |_| vec![1, 2, 3])
        }),
        Case::new("st-empty-file", &[FILE, "too short"], |d| {
            with_bytes(d, |_| Vec::new())
        }),
        Case::new(
            "st-header-past-end",
            &[FILE, "header length", "past the end"],
            |d| {
                with_bytes(d, |mut b| {
                    let len = b.len() as u64;
                    b[..8].copy_from_slice(&len.to_le_bytes());
                    b
                })
            },
        ),
        Case::new("st-header-not-utf8", &[FILE, "not UTF-8"], |d| {
            with_bytes(d, |mut b| {
                b[9] = 0xff;
                b
            })
        }),
        Case::new("st-header-json-array", &[FILE, "not a JSON object"], |d| {
            with_bytes(d, |mut b| {
                b[8] = b'[';
                b
            })
        }),
        Case::new("st-header-not-json", &[FILE, "JSON"], |d| {
            with_bytes(d, |_| join_safetensors("{ this is not json }", &[0; 16]))
        }),
        Case::new("st-overlapping-offsets", &[FILE, "overlap"], |d| {
            with_header(d, |h| {
                let first = h[NORM]["data_offsets"].clone();
                h.get_mut("model.layers.0.input_layernorm.weight").unwrap()["data_offsets"] = first;
            })
        }),
        Case::new(
            "st-offsets-out-of-range",
            &[FILE, NORM, "outside the data section"],
            |d| {
                with_header(d, |h| {
                    h.get_mut(NORM).unwrap()["data_offsets"] = json!([10_000_000, 10_000_256]);
                })
            },
        ),
        Case::new("st-offsets-reversed", &[FILE, NORM], |d| {
            with_header(d, |h| {
                let o = h[NORM]["data_offsets"].as_array().unwrap().clone();
                h.get_mut(NORM).unwrap()["data_offsets"] = json!([o[1], o[0]]);
            })
        }),
        Case::new("st-offsets-missing", &[FILE, NORM, "data_offsets"], |d| {
            with_header(d, |h| {
                h.get_mut(NORM)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("data_offsets");
            })
        }),
        Case::new(
            "st-dtype-byte-length",
            &[FILE, NORM, "needs 128 bytes", "span 256"],
            |d| with_header(d, |h| h.get_mut(NORM).unwrap()["dtype"] = "F16".into()),
        ),
        Case::new(
            "st-shape-byte-length",
            &[FILE, NORM, "needs 260 bytes"],
            |d| with_header(d, |h| h.get_mut(NORM).unwrap()["shape"] = json!([65])),
        ),
        Case::new(
            "st-unknown-dtype",
            &[FILE, "unsupported dtype `F8_E4M3`"],
            |d| with_header(d, |h| h.get_mut(NORM).unwrap()["dtype"] = "F8_E4M3".into()),
        ),
        Case::new(
            "st-integer-weight",
            &[FILE, NORM, "not a float type"],
            |d| with_header(d, |h| h.get_mut(NORM).unwrap()["dtype"] = "I32".into()),
        ),
        Case::new("st-duplicate-names", &[FILE, "`a` appears twice"], |d| {
            let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
            with_bytes(d, |_| join_safetensors(header, &[0; 8]))
        }),
        Case::new(
            "st-missing-tensor",
            &[
                "st-missing-tensor",
                "missing tensor `model.layers.1.mlp.up_proj.weight`",
            ],
            |d| {
                with_header(d, |h| {
                    h.remove("model.layers.1.mlp.up_proj.weight");
                })
            },
        ),
        Case::new(
            "st-shape-disagrees-with-config",
            &[
                "model.layers.0.mlp.gate_proj.weight",
                "[172, 64]",
                "[100, 64]",
            ],
            |d| {
                copy_fixture("tiny-llama", d);
                crate::model_files::edit_config(d, |m| {
                    m.insert("intermediate_size".into(), 100.into());
                });
                load_model(d)
            },
        ),
        Case::new(
            "st-no-weights-file",
            &["st-no-weights-file", "safetensors"],
            |d| {
                copy_fixture("tiny-llama", d);
                std::fs::remove_file(d.join(FILE)).unwrap();
                load_model(d)
            },
        ),
        Case::new(
            "st-shard-index-missing-shard",
            &[
                "model.safetensors.index.json",
                "model-00002-of-00002.safetensors",
                "does not exist",
            ],
            |d| {
                copy_fixture("tiny-llama", d);
                std::fs::rename(d.join(FILE), d.join("model-00001-of-00002.safetensors")).unwrap();
                let index = json!({"metadata": {}, "weight_map": {
                    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                    "lm_head.weight": "model-00002-of-00002.safetensors"}});
                std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
                load_model(d)
            },
        ),
        Case::new(
            "st-shard-index-not-json",
            &["model.safetensors.index.json", "JSON"],
            |d| {
                copy_fixture("tiny-llama", d);
                std::fs::rename(d.join(FILE), d.join("model-00001-of-00001.safetensors")).unwrap();
                std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": ")
                    .unwrap();
                load_model(d)
            },
        ),
    ]
}
