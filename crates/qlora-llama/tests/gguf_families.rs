//! GGUF files of the architectures beside `llama` (`qwen2`, `qwen3`, `phi3`, `gemma3`) in
//! llama.cpp's own layout (`tests/fixtures/family-gguf/`, written from the golden families by
//! `tests/fixtures/scripts/make_family_ggufs.py` with gguf-py's tensor map and
//! `convert_hf_to_gguf.py`'s conventions, and read back by transformers' GGUF loader to the
//! same logits there): each loads to the family, with logits within 1e-4 of transformers' on the
//! HF model (for gemma3, the HF model as llama.cpp runs its GGUF: `head_dim^-½` attention scale,
//! the default layer pattern), and quantized to NF4 on load it is the HF folder quantized on
//! load, to the bit; and a Phi-3 GGUF with LongRoPE factors.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{LayerType, LlamaConfig, LlamaForCausalLM, ModelType};
use qlora_nf4::QuantConfig;
use qlora_nn::LoraApplier;
use safetensors::SafeTensors;

#[path = "support/logits.rs"]
mod logits;
use logits::{check, st_f32s, st_i64s, values};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn input_ids(family: &str, device: &Device) -> Tensor<2, Int> {
    let bytes = std::fs::read(
        fixtures()
            .join("golden/families")
            .join(family)
            .join("reference.safetensors"),
    )
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, shape) = st_i64s(&st, "input_ids");
    Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
}

fn gguf(family: &str) -> PathBuf {
    fixtures()
        .join("family-gguf")
        .join(format!("{family}.gguf"))
}

fn loads_as_transformers_computes(family: &str, model_type: ModelType) -> LlamaConfig {
    let device = Device::flex();
    let model = LlamaForCausalLM::load(gguf(family), &LoraApplier::base_only(None, &device))
        .unwrap_or_else(|e| panic!("{family}: {e}"));
    assert_eq!(model.config.model_type, model_type);
    let want = std::fs::read(
        fixtures()
            .join("family-gguf")
            .join(format!("{family}.safetensors")),
    )
    .unwrap();
    let want = SafeTensors::deserialize(&want).unwrap();
    let ids = input_ids(family, &device);
    check(
        &format!("{family} GGUF logits_fp32"),
        values(model.forward(ids, None)),
        &st_f32s(&want, "logits_fp32"),
        1e-4,
    );
    model.config
}

/// NF4 quantized on load from the GGUF gives the logits of the HF folder quantized on load
/// (the same f32 weights, so the same codes).
fn quantizes_as_the_hf_folder(family: &str) {
    let device = Device::flex();
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let from_gguf = LlamaForCausalLM::load(gguf(family), &applier).unwrap();
    let from_hf = LlamaForCausalLM::load(
        fixtures()
            .join("golden/families")
            .join(family)
            .join("model"),
        &applier,
    )
    .unwrap();
    let ids = input_ids(family, &device);
    let (a, b) = (
        values(from_gguf.forward(ids.clone(), None)),
        values(from_hf.forward(ids, None)),
    );
    assert_eq!(a, b, "{family}: NF4 from GGUF vs from the HF folder");
}

#[test]
fn qwen2_gguf_matches_transformers() {
    let c = loads_as_transformers_computes("qwen2", ModelType::Qwen2);
    assert!(c.qkv_has_bias() && !c.o_has_bias() && c.tie_word_embeddings);
    quantizes_as_the_hf_folder("qwen2");
}

#[test]
fn qwen3_gguf_matches_transformers() {
    let c = loads_as_transformers_computes("qwen3", ModelType::Qwen3);
    // `attention.key_length` 32, not hidden / heads.
    assert!(c.qk_norm && c.head_dim == 32);
    quantizes_as_the_hf_folder("qwen3");
}

#[test]
fn phi3_gguf_matches_transformers() {
    let c = loads_as_transformers_computes("phi3", ModelType::Phi3);
    // `rope.dimension_count` 12 of head_dim 16.
    assert!(c.fused_projections && c.rotary_dim == 12);
    quantizes_as_the_hf_folder("phi3");
}

#[test]
fn gemma3_gguf_matches_transformers() {
    let c = loads_as_transformers_computes("gemma3", ModelType::Gemma3);
    // llama.cpp's pattern of 6 over 3 layers: every layer slides, window 6, RoPE 1e4 there.
    assert_eq!(
        (0..3).map(|i| c.layer_type(i)).collect::<Vec<_>>(),
        [LayerType::Sliding; 3]
    );
    assert_eq!((c.sliding_window, c.layer_rope(0).theta), (Some(6), 1e4));
    assert_eq!(c.query_pre_attn_scalar, Some(c.head_dim as f64));
}

/// Phi-3 with LongRoPE as llama.cpp writes it (`rope_factors_long` / `rope_factors_short`,
/// `rope.scaling.original_context_length`, `rope.scaling.attn_factor`): transformers' logits of
/// the HF model (`tests/fixtures/phi3-longrope`) past the original context.
#[test]
fn phi3_longrope_gguf_matches_transformers() {
    use qlora_llama::RopeScaling;
    let device = Device::flex();
    let model = LlamaForCausalLM::load(
        gguf("phi3-longrope"),
        &LoraApplier::base_only(None, &device),
    )
    .unwrap();
    assert!(matches!(
        model.config.rope.scaling,
        RopeScaling::LongRope {
            original_max_position_embeddings: 8,
            ..
        }
    ));
    let want = std::fs::read(fixtures().join("phi3-longrope/reference.safetensors")).unwrap();
    let want = SafeTensors::deserialize(&want).unwrap();
    check(
        "phi3 LongRoPE GGUF logits_long",
        values(model.forward(input_ids("phi3", &device), None)),
        &st_f32s(&want, "logits_long"),
        1e-4,
    );
}
