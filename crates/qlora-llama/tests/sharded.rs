//! A sharded checkpoint (`model.safetensors.index.json` + shards) loads like the single file.
//! The malformed model folders (config, safetensors, shards, NaN weights, tokenizer) are in
//! the workspace's bad-input corpus, `tests/bad_inputs/`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use qlora_llama::{LlamaError, LlamaForCausalLM};
use qlora_nn::LoraApplier;

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
