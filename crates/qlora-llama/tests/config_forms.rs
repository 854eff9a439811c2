//! `config.json` in transformers 4 and 5 forms, RoPE scalings, eos as int or list; weights in
//! BF16/F16; the Llama-3 chat template.

use std::path::PathBuf;

#[path = "../../../tests/support/byte_tokenizer.rs"]
mod byte_tokenizer;

use burn::tensor::{Device, Int, Tensor};
use qlora_llama::{
    ChatMessage, ChatTemplate, LlamaConfig, LlamaForCausalLM, LlamaTokenizer, Rope, RopeScaling,
};
use qlora_nn::LoraApplier;

fn base() -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
        "rms_norm_eps": 1e-5
    })
}

fn parse(v: &serde_json::Value) -> LlamaConfig {
    LlamaConfig::from_json_str(&v.to_string(), "config.json").unwrap()
}

#[test]
fn transformers_4_and_5_forms() {
    // v4: top-level rope_theta + rope_scaling (llama3), eos as a list, no kv heads, no head_dim.
    let mut v4 = base();
    v4["rope_theta"] = 500000.0.into();
    v4["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    v4["eos_token_id"] = serde_json::json!([128001, 128008, 128009]);
    v4["tie_word_embeddings"] = true.into();
    let c = parse(&v4);
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.tie_word_embeddings),
        (4, 16, true)
    );
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert_eq!(c.rope.theta, 500000.0);
    assert!(matches!(
        c.rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            original_max_position_embeddings: 8192,
            ..
        }
    ));
    // v5: rope_parameters, linear scaling, eos as an int, explicit head_dim, biases.
    let mut v5 = base();
    v5["rope_parameters"] =
        serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0});
    v5["eos_token_id"] = 2.into();
    v5["head_dim"] = 32.into();
    v5["num_key_value_heads"] = 2.into();
    v5["attention_bias"] = true.into();
    let c = parse(&v5);
    assert_eq!(
        (c.head_dim, c.num_key_value_heads, c.attention_bias),
        (32, 2, true)
    );
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    // Written back and read again: the same config.
    assert_eq!(LlamaConfig::from_json_str(&c.to_hf_json(), "x").unwrap(), c);
}

#[test]
fn rope_scalings_change_the_frequencies_as_transformers_does() {
    let mut v = base();
    let plain = Rope::new(&parse(&v).rope, 16);
    v["rope_parameters"] =
        serde_json::json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0});
    let linear = Rope::new(&parse(&v).rope, 16);
    let dev = Device::flex();
    // Linear scaling: position 8 with factor 4 is position 2 unscaled.
    let (c1, s1) = plain.tables(2, 1, &dev);
    let (c2, s2) = linear.tables(8, 1, &dev);
    let close = |a: Tensor<2>, b: Tensor<2>| {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5)
    };
    assert!(close(c1, c2) && close(s1, s2));
}

/// transformers' own `LlamaRotaryEmbedding` (5.23.0, `tests/fixtures/scripts/make_rope_llama3.py`):
/// its `inv_freq` and its cos/sin at positions up to 8191, for the llama3 scaling at Llama 3.1
/// and 3.2 settings and a case with most frequencies in the smoothing band, and for the default
/// and linear types. A wrong band edge or smoothing formula moves the frequencies by far more
/// than the bounds here (2 f32 ulps; on cos/sin 1e-6 plus the f32 rounding of the angle,
/// which reaches 8191 rad).
#[test]
fn rope_frequencies_and_tables_equal_transformers() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rope_llama3.json"),
    )
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dev = Device::flex();
    let mut smoothed = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let head_dim = case["head_dim"].as_u64().unwrap() as usize;
        let mut v = base();
        v["hidden_size"] = (head_dim * 4).into();
        v["head_dim"] = head_dim.into();
        v["rope_parameters"] = case["rope_parameters"].clone();
        let config = parse(&v);
        let rope = Rope::new(&config.rope, head_dim);
        let want: Vec<f32> = serde_json::from_value(case["inv_freq"].clone()).unwrap();
        assert_eq!(rope.inv_freq().len(), want.len(), "{name}");
        for (i, (a, b)) in rope.inv_freq().iter().zip(&want).enumerate() {
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
            assert!(
                ulps <= 2,
                "{name}: inv_freq[{i}] = {a:e}, transformers {b:e}"
            );
        }
        if let RopeScaling::Llama3 { factor, .. } = config.rope.scaling {
            // The smoothing band: frequencies neither kept nor divided by the factor.
            let plain = Rope::new(
                &qlora_llama::RopeConfig {
                    theta: config.rope.theta,
                    scaling: RopeScaling::Default,
                },
                head_dim,
            );
            smoothed += plain
                .inv_freq()
                .iter()
                .zip(rope.inv_freq())
                .filter(|(p, s)| {
                    let r = (**s / **p) as f64;
                    r < 0.999 && r > 1.001 / factor
                })
                .count();
        }
        let positions: Vec<usize> = serde_json::from_value(case["positions"].clone()).unwrap();
        let want_cos: Vec<Vec<f32>> = serde_json::from_value(case["cos"].clone()).unwrap();
        let want_sin: Vec<Vec<f32>> = serde_json::from_value(case["sin"].clone()).unwrap();
        for (k, &p) in positions.iter().enumerate() {
            let (c, s) = rope.tables(p, 1, &dev);
            for (what, ours, want) in [("cos", c, &want_cos[k]), ("sin", s, &want_sin[k])] {
                let ours = ours.into_data().try_to_vec::<f32>().unwrap();
                assert_eq!(ours.len(), want.len());
                let half = rope.inv_freq().len();
                for (i, (a, b)) in ours.iter().zip(want).enumerate() {
                    // An f32 angle of thousands of radians is itself rounded by a few 1e-4:
                    // cos/sin implementations agree to that rounding, not beyond.
                    let angle = p as f32 * rope.inv_freq()[i % half];
                    let tol = 1e-6 + 2.0 * angle.abs() * f32::EPSILON;
                    assert!(
                        (a - b).abs() <= tol,
                        "{name}: {what}[{p}, {i}] = {a}, transformers {b}"
                    );
                }
            }
        }
    }
    assert!(
        smoothed >= 8,
        "the cases cover the smoothing band ({smoothed} frequencies in it)"
    );
}

#[test]
fn half_precision_checkpoints_load() {
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/tiny-llama");
    let bytes = std::fs::read(golden.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let device = Device::flex();
    let ids = Tensor::<2, Int>::from_data([[3, 17, 99, 250, 7, 400]], &device);
    let reference = LlamaForCausalLM::load(&golden, &LoraApplier::base_only(None, &device))
        .unwrap()
        .forward(ids.clone(), None)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (dtype, conv) in [
        (
            safetensors::Dtype::BF16,
            (|x: f32| qlora_nf4::bf16::from_f32(x).to_bits()) as fn(f32) -> u16,
        ),
        (safetensors::Dtype::F16, |x: f32| {
            qlora_nf4::f16::from_f32(x).to_bits()
        }),
    ] {
        let dir = std::env::temp_dir().join(format!("qlora-half-{dtype:?}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(golden.join("config.json"), dir.join("config.json")).unwrap();
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let b: Vec<u8> = v
                    .data()
                    .chunks_exact(4)
                    .flat_map(|c| conv(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                    .collect();
                (n, v.shape().to_vec(), b)
            })
            .collect();
        let views = data.iter().map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
            )
        });
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        let got = LlamaForCausalLM::load(&dir, &LoraApplier::base_only(None, &device))
            .unwrap()
            .forward(ids.clone(), None)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let err = qlora_testenv::compare::rel_err(&got, &reference, &format!("{dtype:?}"));
        assert!(err < 0.05, "{dtype:?}: relative error {err}");
        assert!(err > 0.0, "{dtype:?}: rounding must show");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn llama3_chat_template_renders() {
    let t = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    let t = ChatTemplate::new(Some(t), "tokenizer_config.json").unwrap();
    let out = t
        .render(
            &[
                ChatMessage::new("system", "Be brief. "),
                ChatMessage::new("user", "Hi"),
            ],
            true,
            "<|begin_of_text|>",
            "<|eot_id|>",
        )
        .unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // Python string methods used by many templates work too.
    let t = ChatTemplate::new(Some("{{ messages[0]['content'].strip().upper() }}"), "x").unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "  hi ")], false, "", "")
            .unwrap(),
        "HI"
    );
    // A template that raises gives a named error.
    let t = ChatTemplate::new(Some("{{ raise_exception('roles must alternate') }}"), "x").unwrap();
    assert!(
        t.render(&[], false, "", "")
            .unwrap_err()
            .to_string()
            .contains("roles must alternate")
    );
}

#[test]
fn a_list_of_chat_templates_uses_the_default_one_as_transformers_does() {
    let dir = std::env::temp_dir().join(format!("qlora-chat-list-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    byte_tokenizer::write(&dir);
    let config = dir.join("tokenizer_config.json");
    let write_config = |templates: serde_json::Value| {
        let cfg = serde_json::json!({"eos_token": "</s>", "chat_template": templates});
        std::fs::write(&config, cfg.to_string()).unwrap();
    };
    let hi = [ChatMessage::new("user", "hi")];
    write_config(serde_json::json!([
        {"name": "tool_use", "template": "TOOLS {{ messages[0]['content'] }}"},
        {"name": "default", "template": "DEFAULT {{ messages[0]['content'] }}"},
    ]));
    let tok = LlamaTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.apply_chat_template(&hi, false).unwrap(), "DEFAULT hi");
    // No `default`: rendering is an error that names the file and the templates, never ChatML.
    write_config(serde_json::json!([
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "rag", "template": "RAG"},
    ]));
    let tok = LlamaTokenizer::from_dir(&dir).unwrap();
    let e = tok.apply_chat_template(&hi, false).unwrap_err().to_string();
    for word in ["tokenizer_config.json", "tool_use, rag", "default"] {
        assert!(e.contains(word), "{e}");
    }
    // Items that are not named templates are a named load error.
    write_config(serde_json::json!([{"template": "X"}]));
    let e = LlamaTokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("name"),
        "{e}"
    );
    // A `chat_template.jinja` beside the config takes priority over the config's templates.
    std::fs::write(
        dir.join("chat_template.jinja"),
        "JINJA {{ messages[0]['content'] }}",
    )
    .unwrap();
    let tok = LlamaTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.apply_chat_template(&hi, false).unwrap(), "JINJA hi");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_pad_id_is_the_pad_token_else_eos_as_trl_sets_it() {
    let dir = std::env::temp_dir().join(format!("qlora-pad-id-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    byte_tokenizer::write(&dir);
    let config = dir.join("tokenizer_config.json");
    let load = |cfg: serde_json::Value| {
        std::fs::write(&config, cfg.to_string()).unwrap();
        LlamaTokenizer::from_dir(&dir).unwrap()
    };
    let tok = load(serde_json::json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}));
    assert_eq!(Some(tok.pad_id(usize::MAX)), tok.token_id("<|endoftext|>"));
    let tok = load(serde_json::json!({"eos_token": "<|im_end|>"}));
    assert_eq!(Some(tok.pad_id(usize::MAX)), tok.token_id("<|im_end|>"));
    // A pad token the vocabulary lacks falls back too.
    let tok =
        load(serde_json::json!({"eos_token": "<|im_end|>", "pad_token": {"content": "<pad>"}}));
    assert_eq!(Some(tok.pad_id(usize::MAX)), tok.token_id("<|im_end|>"));
    let tok = load(serde_json::json!({}));
    assert_eq!(tok.pad_id(usize::MAX), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
