//! Malformed model folders, made by the test from the golden tiny LLaMA: every one is an error
//! that names the file and what is wrong, never a panic.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use qlora_llama::{LlamaError, LlamaForCausalLM, LlamaTokenizer};
use qlora_nn::LoraApplier;
use serde_json::Value;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

/// A copy of the golden tiny LLaMA folder named `name`.
fn copy(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden("tiny-llama").join(f), d.join(f)).unwrap();
    }
    d
}

fn load(dir: &Path) -> Result<LlamaForCausalLM, LlamaError> {
    LlamaForCausalLM::load(dir, &LoraApplier::base_only(None, &Device::flex()))
}

fn expect_err(dir: &Path, file: &str, words: &[&str]) {
    let e = match load(dir) {
        Ok(_) => panic!("{}: loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(file), "error does not name `{file}`: {e}");
    for w in words {
        assert!(e.contains(w), "error lacks `{w}`: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_config_fields() {
    let cases: Vec<(
        &str,
        Box<dyn Fn(&mut serde_json::Map<String, Value>)>,
        Vec<&str>,
    )> = vec![
        (
            "missing",
            Box::new(|m| {
                m.remove("hidden_size");
            }),
            vec!["hidden_size", "missing"],
        ),
        (
            "zero-heads",
            Box::new(|m| {
                m.insert("num_attention_heads".into(), 0.into());
            }),
            vec!["num_attention_heads"],
        ),
        (
            "negative",
            Box::new(|m| {
                m.insert("intermediate_size".into(), (-5).into());
            }),
            vec!["intermediate_size", "positive integer"],
        ),
        (
            "kv-not-dividing",
            Box::new(|m| {
                m.insert("num_key_value_heads".into(), 3.into());
            }),
            vec!["num_key_value_heads", "does not divide"],
        ),
        (
            "heads-not-dividing",
            Box::new(|m| {
                m.remove("head_dim");
                m.insert("num_attention_heads".into(), 3.into());
                m.insert("num_key_value_heads".into(), 3.into());
            }),
            vec!["does not divide hidden_size"],
        ),
        (
            "act",
            Box::new(|m| {
                m.insert("hidden_act".into(), "gelu".into());
            }),
            vec!["hidden_act", "gelu"],
        ),
        (
            "rope",
            Box::new(|m| {
                m.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_type": "yarn", "rope_theta": 1e4}),
                );
            }),
            vec!["rope_parameters.rope_type", "yarn"],
        ),
        (
            "llama3-missing",
            Box::new(|m| {
                m.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
                );
            }),
            vec!["low_freq_factor"],
        ),
        (
            "model-type",
            Box::new(|m| {
                m.insert("model_type".into(), "gpt2".into());
            }),
            vec!["model_type"],
        ),
    ];
    for (name, f, words) in cases {
        let d = copy(name);
        edit_config(&d, f);
        expect_err(&d, "config.json", &words);
    }
    let d = copy("not-json");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    expect_err(&d, "config.json", &["not valid JSON"]);
}

#[test]
fn wrong_shape_and_non_finite_weights() {
    // The config says a smaller MLP than the weights have.
    let d = copy("shape");
    edit_config(&d, |m| {
        m.insert("intermediate_size".into(), 100.into());
    });
    expect_err(
        &d,
        "qlora-bad-shape",
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "[172, 64]",
            "[100, 64]",
        ],
    );
    // A NaN in a weight.
    let d = copy("nan");
    let p = d.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (name, view) = st
        .tensors()
        .into_iter()
        .find(|(n, _)| n == "model.layers.1.self_attn.v_proj.weight")
        .unwrap();
    let off = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let _ = (name, n);
    bytes[off + 40..off + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    expect_err(
        &d,
        "qlora-bad-nan",
        &[
            "model.layers.1.self_attn.v_proj.weight",
            "non-finite",
            "index 10",
        ],
    );
}

/// Rewrites the header of `dir/model.safetensors` with `f` (data section unchanged).
fn edit_header(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(h.as_object_mut().unwrap());
    let text = serde_json::to_string(&h).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(p, out).unwrap();
}

#[test]
fn malformed_safetensors_files() {
    let file = "model.safetensors";
    let d = copy("truncated");
    let p = d.join(file);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 1000]).unwrap();
    expect_err(&d, file, &["outside the data section"]);

    let d = copy("tiny");
    std::fs::write(d.join(file), [1u8, 2, 3]).unwrap();
    expect_err(&d, file, &["too short"]);

    let d = copy("header-past-end");
    let p = d.join(file);
    let mut b = std::fs::read(&p).unwrap();
    let len = b.len() as u64;
    b[..8].copy_from_slice(&len.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    expect_err(&d, file, &["header length", "past the end"]);

    let d = copy("utf8");
    let p = d.join(file);
    let mut b = std::fs::read(&p).unwrap();
    b[9] = 0xff;
    std::fs::write(&p, b).unwrap();
    expect_err(&d, file, &["not UTF-8"]);

    let d = copy("json");
    let p = d.join(file);
    let mut b = std::fs::read(&p).unwrap();
    b[8] = b'[';
    std::fs::write(&p, b).unwrap();
    expect_err(&d, file, &["not a JSON object"]);

    let d = copy("overlap");
    edit_header(&d, |h| {
        let first = h["model.norm.weight"]["data_offsets"].clone();
        h.get_mut("model.layers.0.input_layernorm.weight").unwrap()["data_offsets"] = first;
    });
    expect_err(&d, file, &["overlap"]);

    let d = copy("dtype");
    edit_header(&d, |h| {
        h.get_mut("model.norm.weight").unwrap()["dtype"] = "F16".into();
    });
    expect_err(
        &d,
        file,
        &["model.norm.weight", "needs 128 bytes", "span 256"],
    );

    let d = copy("unknown-dtype");
    edit_header(&d, |h| {
        h.get_mut("model.norm.weight").unwrap()["dtype"] = "F8_E4M3".into();
    });
    expect_err(&d, file, &["unsupported dtype `F8_E4M3`"]);

    let d = copy("int-weight");
    edit_header(&d, |h| {
        h.get_mut("model.norm.weight").unwrap()["dtype"] = "I32".into();
    });
    expect_err(&d, file, &["model.norm.weight", "not a float type"]);

    let d = copy("missing-tensor");
    edit_header(&d, |h| {
        h.remove("model.layers.1.mlp.up_proj.weight");
    });
    expect_err(
        &d,
        "qlora-bad-missing-tensor",
        &["missing tensor `model.layers.1.mlp.up_proj.weight`"],
    );

    // Duplicate names: the header written by hand.
    let d = copy("duplicate");
    let p = d.join(file);
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend([0u8; 8]);
    std::fs::write(&p, b).unwrap();
    expect_err(&d, file, &["`a` appears twice"]);
}

#[test]
fn shard_index_naming_a_missing_file() {
    let d = copy("shards");
    std::fs::rename(
        d.join("model.safetensors"),
        d.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors"
        }
    });
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    expect_err(
        &d,
        "model.safetensors.index.json",
        &["model-00002-of-00002.safetensors", "does not exist"],
    );
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    // Split the golden model in two shards by tensor name.
    let d = copy("sharded-ok");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map = serde_json::Map::new();
    let mut shards: [Vec<(String, safetensors::tensor::TensorView<'_>)>; 2] = [vec![], vec![]];
    for (i, (name, view)) in st.tensors().into_iter().enumerate() {
        let f = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(name.clone(), f.into());
        shards[i % 2].push((name, view));
    }
    for (i, s) in shards.into_iter().enumerate() {
        safetensors::serialize_to_file(
            s,
            None,
            &d.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let device = Device::flex();
    let a = load(&d).unwrap();
    let b = load(&golden("tiny-llama")).unwrap();
    let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data([[5, 9, 200, 3]], &device);
    assert_eq!(
        a.forward(ids.clone(), None).into_data(),
        b.forward(ids, None).into_data()
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tokenizer_json_that_does_not_parse() {
    let d = copy("tokenizer");
    std::fs::write(d.join("tokenizer.json"), r#"{"model": {"type": "Nope"}}"#).unwrap();
    let e = LlamaTokenizer::from_dir(&d).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("does not parse"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
