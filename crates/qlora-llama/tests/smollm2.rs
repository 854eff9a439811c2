//! The default model, SmolLM2-135M-Instruct (GGUF Q4_1, quantized to NF4 on load): greedy
//! ChatML generation answers "Paris", and its tokenizer round-trips. Runs when the model is in
//! the cache, or fetches it first with `QLORA_FETCH_MODEL=1` (CI sets it).

use burn::tensor::Device;
use qlora_llama::{
    ChatMessage, GenerationConfig, GgufFile, LlamaForCausalLM, LlamaTokenizer, Sampling,
    default_model, default_model_path,
};
use qlora_nf4::QuantConfig;
use qlora_nn::LoraApplier;

fn model_path() -> Option<std::path::PathBuf> {
    if std::env::var_os("QLORA_FETCH_MODEL").is_some() {
        return Some(default_model().expect("fetching the default model"));
    }
    let p = default_model_path();
    if p.exists() {
        Some(default_model().expect("cached default model"))
    } else {
        eprintln!(
            "skipped: {} not cached (set QLORA_FETCH_MODEL=1)",
            p.display()
        );
        None
    }
}

#[test]
fn greedy_chat_answer_names_paris() {
    let Some(path) = model_path() else { return };
    let device = Device::flex();
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let model = LlamaForCausalLM::load(&path, &applier).unwrap();
    let tok = LlamaTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let prompt = tok
        .apply_chat_template(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let ids = tok.encode(&prompt, true).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
        stop_tokens: tok.eos_id().into_iter().collect(),
    };
    let out = model.generate(&ids, &config, |_| true);
    let answer = tok.decode(&out, true).unwrap();
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn smollm2_tokenizer_round_trips() {
    let Some(path) = model_path() else { return };
    let tok = LlamaTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    for text in [
        "Hello, world! 12345 ok",
        "  leading and   inner   spaces\n\ttab",
        "héllo wörld ✓ 日本語 🦀",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // Digits are split one by one; ChatML markers are single ids 1 and 2.
    assert_eq!(tok.encode("12345", false).unwrap().len(), 5);
    let ids = tok.encode("<|im_start|>user<|im_end|>", false).unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2));
}
