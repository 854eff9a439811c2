//! Sliding-window layers in other settings than the golden families' (the same weights under
//! a changed `config.json`, `tests/fixtures/layer-windows/`, made by
//! `tests/fixtures/scripts/make_layer_windows.py` with transformers 5.23): Qwen2's
//! `use_sliding_window` from `max_window_layers` on, Qwen3's explicit `layer_types`, and
//! Gemma 3's `sliding_window_pattern` with linear RoPE scaling on its full layers. Each: fp32
//! logits within 1e-4 of transformers', greedy ids with the KV cache identical, and the config
//! written back reading as the same.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LayerType, LlamaConfig, LlamaForCausalLM};
use qlora_nn::LoraApplier;
use safetensors::SafeTensors;

#[path = "support/family.rs"]
mod golden_families;
use golden_families::greedy_after;
#[path = "support/logits.rs"]
mod logits;
use logits::{check, st_f32s, st_i64s, values};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The variant's model folder (its config, the family's weights) in a temporary directory.
fn model_dir(variant: &str, family: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qlora-windows-{variant}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures()
            .join("layer-windows")
            .join(variant)
            .join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixtures()
            .join("golden/families")
            .join(family)
            .join("model/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    dir
}

fn matches_transformers(variant: &str, family: &str, types: [LayerType; 3]) {
    let device = Device::flex();
    let dir = model_dir(variant, family);
    let model = LlamaForCausalLM::load_hf(&dir, &LoraApplier::base_only(None, &device)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let c = &model.config;
    assert_eq!((0..3).map(|i| c.layer_type(i)).collect::<Vec<_>>(), types);
    let back = LlamaConfig::from_json_str(&c.to_hf_json(), "config.json").unwrap();
    assert_eq!(&back, c, "{variant}: config written back");

    let golden = std::fs::read(
        fixtures()
            .join("golden/families")
            .join(family)
            .join("reference.safetensors"),
    )
    .unwrap();
    let golden = SafeTensors::deserialize(&golden).unwrap();
    let want = std::fs::read(
        fixtures()
            .join("layer-windows")
            .join(variant)
            .join("reference.safetensors"),
    )
    .unwrap();
    let want = SafeTensors::deserialize(&want).unwrap();
    let (ids, shape) = st_i64s(&golden, "input_ids");
    let ids: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    check(
        &format!("{variant} logits_fp32"),
        values(model.forward(ids, None)),
        &st_f32s(&want, "logits_fp32"),
        1e-4,
    );
    let got = greedy_after(&model, &st_i64s(&golden, "prompt").0);
    assert_eq!(
        got,
        st_i64s(&want, "greedy_fp32").0,
        "{variant} greedy_fp32"
    );
}

#[test]
fn qwen2_slides_from_max_window_layers_on() {
    use LayerType::{Full, Sliding};
    matches_transformers("qwen2-sliding", "qwen2", [Full, Sliding, Sliding]);
}

#[test]
fn qwen3_slides_where_layer_types_says() {
    use LayerType::{Full, Sliding};
    matches_transformers("qwen3-sliding", "qwen3", [Sliding, Full, Sliding]);
}

#[test]
fn gemma3_slides_by_its_pattern_with_scaled_rope_on_full_layers() {
    use LayerType::{Full, Sliding};
    matches_transformers("gemma3-pattern", "gemma3", [Sliding, Sliding, Full]);
}
