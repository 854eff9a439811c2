//! The default model, SmolLM2-135M-Instruct (GGUF Q4_1, quantized to NF4 on load): greedy
//! ChatML generation answers "Paris", and its tokenizer round-trips. Runs when the model is in
//! the cache, or fetches it first with `QLORA_FETCH_MODEL=1` (CI sets it); elsewhere `cargo test`
//! lists them as ignored, with the reason.

use burn::tensor::Device;
use qlora_llama::{
    ChatMessage, GenerationConfig, GgufFile, LlamaForCausalLM, LlamaTokenizer, Sampling,
    TokenizerFiles, default_model, default_model_path,
};
use qlora_nf4::QuantConfig;
use qlora_nn::LoraApplier;

/// The default model: fetched first with `QLORA_FETCH_MODEL=1`, else the cached copy. Where the
/// build found neither, the tests are ignored with the reason (`qlora-testenv`).
fn model_path() -> std::path::PathBuf {
    default_model().expect("the default model (fetched with QLORA_FETCH_MODEL=1, or cached)")
}

#[test]
#[cfg_attr(
    qlora_no_default_model,
    ignore = "cannot run here: the default model is not cached (QLORA_FETCH_MODEL=1 fetches it)"
)]
fn greedy_chat_answer_names_paris() {
    let path = model_path();
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
#[cfg_attr(
    qlora_no_default_model,
    ignore = "cannot run here: the default model is not cached (QLORA_FETCH_MODEL=1 fetches it)"
)]
fn smollm2_tokenizer_round_trips() {
    let path = model_path();
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

/// The build script decides from `qlora_testenv`'s idea of the cache whether these tests can run:
/// it must be the path `default_model` uses.
#[test]
fn the_build_probe_looks_where_the_model_is_cached() {
    assert_eq!(qlora_testenv::default_model_path(), default_model_path());
}

/// Block gradient checkpointing on the default model (30 layers, NF4, LoRA r 8 with dropout on
/// every linear): one training step's loss and every LoRA gradient are the same bits with it.
#[test]
#[cfg_attr(
    qlora_no_default_model,
    ignore = "cannot run here: the default model is not cached (QLORA_FETCH_MODEL=1 fetches it)"
)]
fn block_checkpointing_gives_the_same_step_bits() {
    use burn::tensor::{Int, Tensor, TensorData};
    use qlora_llama::LoraModel;
    use qlora_nn::{GradientCheckpointing, LoraConfig, ModuleSelector};

    let path = model_path();
    let device = Device::flex().autodiff();
    device.seed(5);
    let lora = LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.1,
        target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
        ..LoraConfig::default()
    };
    let applier = LoraApplier::new(lora, Some(QuantConfig::qlora()), &device).unwrap();
    let model = LlamaForCausalLM::load(&path, &applier).unwrap();
    let ids: Vec<i64> = (0..2 * 48).map(|i| (i * 7919 + 13) % 49152).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 48]), &device);
    let bits = |t: Tensor<1>| -> Vec<u32> {
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    };
    let step = |mode| {
        let model = model.clone().with_gradient_checkpointing(mode);
        device.seed(9);
        let loss = model.loss(ids.clone(), ids.clone());
        let grads = loss.backward();
        let mut out = vec![bits(loss)];
        for (_, layer) in model.linears() {
            let a = layer.adapter("default").unwrap();
            for p in [&a.lora_a, &a.lora_b] {
                let g = p.val().grad(&grads).expect("a LoRA gradient");
                let n = g.shape().num_elements();
                out.push(bits(g.reshape([n])));
            }
        }
        out
    };
    let plain = step(GradientCheckpointing::Off);
    let ckpt = step(GradientCheckpointing::Block);
    assert_eq!(plain.len(), 1 + 2 * 7 * 30);
    // Equal bits would also pass on NaN.
    assert!(
        plain
            .iter()
            .flatten()
            .all(|b| f32::from_bits(*b).is_finite())
    );
    assert!(
        plain == ckpt,
        "a loss or gradient differs with block checkpointing"
    );
}
