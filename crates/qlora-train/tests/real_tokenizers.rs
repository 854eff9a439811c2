//! Tokens as transformers and TRL make them, on tokenizers in the structure of six families'
//! real ones (Llama-3.1, Mistral-Instruct, Qwen2.5, Qwen3, Phi-3, Gemma-3: their post-processors,
//! special tokens, `add_bos_token` settings and real chat templates, small vocabularies), made
//! with transformers 5.25.0 / TRL 1.16.0 by `tests/fixtures/scripts/make_real_tokenizers.py`:
//! - text: `tokenizer(text)` (the post-processor's bos) and TRL's language-modelling samples
//!   (eos appended);
//! - chat: `apply_chat_template(tokenize=True)` (one bos, the template's), the generation
//!   prompt, and TRL's `assistant_only_loss` ids and masks with TRL's training templates;
//! - the model's own templates (no `{% generation %}`): the replies' tokens found in the text.

use std::path::PathBuf;

use qlora_nn::IGNORE_INDEX;
use qlora_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use qlora_train::{DataFormat, DataOptions, Overflow, Sample, load_dataset};
use serde_json::{Value, json};

const FAMILIES: [&str; 6] = ["llama3", "mistral", "qwen2_5", "qwen3", "phi3", "gemma3"];

fn dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers")
        .join(family)
}

fn reference(family: &str) -> Value {
    let text = std::fs::read_to_string(dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The family's reference `texts` or `chats`.
fn cases(family: &str, key: &str) -> Vec<Value> {
    reference(family)[key].as_array().unwrap().clone()
}

/// TRL's assistant mask of a chat case.
fn trl_mask(case: &Value) -> Vec<bool> {
    case["trl_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_u64() == Some(1))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

/// The one sample `load_dataset` makes of `record`.
fn sample(tok: &Tokenizer, record: Value, name: &str) -> Sample {
    let p = std::env::temp_dir().join(format!("qlora-realtok-{}-{name}.jsonl", std::process::id()));
    std::fs::write(&p, format!("{record}\n")).unwrap();
    let opts = DataOptions {
        format: DataFormat::Auto,
        max_len: 4096,
        overflow: Overflow::Error,
        skip_invalid: false,
        ..DataOptions::default()
    };
    let (mut s, _) = load_dataset(&p, tok, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    std::fs::remove_file(&p).unwrap();
    assert_eq!(s.len(), 1);
    s.remove(0)
}

fn trained(s: &Sample) -> Vec<bool> {
    s.labels.iter().map(|&l| l != IGNORE_INDEX).collect()
}

#[test]
fn text_ids_equal_transformers_and_trl() {
    for family in FAMILIES {
        let tok = Tokenizer::from_dir(dir(family)).unwrap();
        for (k, case) in cases(family, "texts").iter().enumerate() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&case["text_ids"]),
                "{family} text {k}: tokenizer(text)"
            );
            let s = sample(&tok, json!({ "text": text }), &format!("{family}-text{k}"));
            assert_eq!(
                s.input_ids,
                ids(&case["trl_text_ids"]),
                "{family} text {k}: TRL's language-modelling sample (eos appended)"
            );
            assert!(
                trained(&s).iter().all(|&t| t),
                "{family}: text trains every token"
            );
        }
    }
}

#[test]
fn chat_ids_equal_apply_chat_template_with_one_bos() {
    for family in FAMILIES {
        let tok = Tokenizer::from_dir(dir(family)).unwrap();
        for (k, case) in cases(family, "chats").iter().enumerate() {
            let msgs = messages(&case["messages"]);
            assert_eq!(
                tok.apply_chat_template(&msgs, false).unwrap(),
                case["rendered"].as_str().unwrap(),
                "{family} chat {k}: rendered text"
            );
            let s = sample(
                &tok,
                json!({ "messages": case["messages"] }),
                &format!("{family}-chat{k}"),
            );
            assert_eq!(
                s.input_ids,
                ids(&case["chat_ids"]),
                "{family} chat {k}: apply_chat_template(tokenize=True)"
            );
            let prompt = tok
                .apply_chat_template(&msgs[..msgs.len() - 1], true)
                .unwrap();
            assert_eq!(
                tok.encode(&prompt, false).unwrap(),
                ids(&case["prompt_ids"]),
                "{family} chat {k}: the generation prompt"
            );
        }
    }
}

#[test]
fn generation_blocks_give_trls_assistant_only_masks() {
    let mut checked = 0;
    for family in FAMILIES {
        let training = dir(family).join("trl_training.jinja");
        if !training.exists() {
            continue; // TRL has no training template for Mistral-Instruct.
        }
        let mut tok = Tokenizer::from_dir(dir(family)).unwrap();
        tok.set_chat_template(ChatTemplate::from_file(&training).unwrap());
        assert!(tok.chat_template.has_generation_blocks());
        for (k, case) in cases(family, "chats").iter().enumerate() {
            let s = sample(
                &tok,
                json!({ "messages": case["messages"] }),
                &format!("{family}-trl{k}"),
            );
            assert_eq!(
                s.input_ids,
                ids(&case["trl_ids"]),
                "{family} chat {k}: TRL's ids"
            );
            let want: Vec<bool> = trl_mask(case);
            assert_eq!(trained(&s), want, "{family} chat {k}: TRL's assistant mask");
            checked += 1;
        }
    }
    assert_eq!(
        checked, 15,
        "five families with TRL training templates, three chats each"
    );
}

#[test]
fn model_templates_train_each_reply_through_its_end_of_turn() {
    let mut compared = Vec::new();
    for family in FAMILIES {
        let tok = Tokenizer::from_dir(dir(family)).unwrap();
        assert!(!tok.chat_template.has_generation_blocks());
        let eos = tok.eos_token.clone().unwrap();
        for (k, case) in cases(family, "chats").iter().enumerate() {
            let msgs = messages(&case["messages"]);
            let s = sample(
                &tok,
                json!({ "messages": case["messages"] }),
                &format!("{family}-own{k}"),
            );
            let kept: Vec<u32> = s
                .labels
                .iter()
                .filter(|&&l| l != IGNORE_INDEX)
                .map(|&l| l as u32)
                .collect();
            let text = tok.decode(&kept, false).unwrap();
            // Every reply is trained, in order, and nothing of the prompts (compared without
            // whitespace: a SentencePiece decoder drops a space at the start of a run of
            // non-adjacent tokens).
            let bare = |s: &str| s.split_whitespace().collect::<String>();
            let squeezed = bare(&text);
            let mut rest = squeezed.as_str();
            for m in msgs.iter().filter(|m| m.role == "assistant") {
                let reply = bare(&m.content);
                let reply = reply.as_str();
                let at = rest
                    .find(reply)
                    .unwrap_or_else(|| panic!("{family} chat {k}: reply {reply:?} in {text:?}"));
                rest = &rest[at + reply.len()..];
            }
            for m in msgs.iter().filter(|m| m.role != "assistant") {
                assert!(
                    !squeezed.contains(&bare(&m.content)),
                    "{family} chat {k}: prompt {:?} trained in {text:?}",
                    m.content
                );
            }
            // The last reply's end-of-turn is trained: the model learns to stop.
            let turn_end = match family {
                "llama3" => "<|eot_id|>",
                "qwen2_5" | "qwen3" => "<|im_end|>",
                "phi3" => "<|end|>",
                "gemma3" => "<end_of_turn>",
                _ => eos.as_str(),
            };
            assert!(
                text.trim_end().ends_with(turn_end) || text.ends_with(&eos),
                "{family} chat {k}: trained text ends {text:?}"
            );
            // Where the model's template renders what TRL's training one does (the same ids),
            // the masks are TRL's, but for the newline after `assistant` that Qwen2.5's training
            // template also trains (Llama 3.1's training template drops the date header, and
            // Qwen3's keeps earlier turns' reasoning in multi-turn chats: other ids, nothing to
            // compare; its one-turn chat is compared, the empty `<think></think>` trained).
            if case.get("trl_ids") == Some(&case["chat_ids"]) {
                let want: Vec<bool> = trl_mask(case);
                let ours = trained(&s);
                if family == "qwen2_5" {
                    for (i, (&o, &w)) in ours.iter().zip(&want).enumerate() {
                        let t = tok.decode(&s.input_ids[i..=i], false).unwrap();
                        assert!(
                            o == w || (w && !o && t == "\n"),
                            "{family} chat {k}: token {i} {t:?} ours {o} TRL {w}"
                        );
                    }
                } else {
                    assert_eq!(ours, want, "{family} chat {k}: TRL's mask");
                }
                compared.push(family);
            }
        }
    }
    compared.dedup();
    assert_eq!(
        compared,
        ["qwen2_5", "qwen3", "phi3", "gemma3"],
        "compared with TRL's masks"
    );
}

#[test]
fn a_model_without_a_template_refuses_chat_data_until_one_is_chosen() {
    let d = std::env::temp_dir().join(format!("qlora-realtok-notemplate-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        dir("llama3").join("tokenizer.json"),
        d.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        d.join("tokenizer_config.json"),
        json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}).to_string(),
    )
    .unwrap();
    let mut tok = Tokenizer::from_dir(&d).unwrap();
    let record = json!({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    let p = d.join("chat.jsonl");
    std::fs::write(&p, format!("{record}\n")).unwrap();
    let opts = DataOptions {
        format: DataFormat::Auto,
        max_len: 512,
        overflow: Overflow::Error,
        skip_invalid: false,
        ..DataOptions::default()
    };
    let e = load_dataset(&p, &tok, &opts).unwrap_err().to_string();
    assert!(
        e.contains("no chat template") && e.contains("chat.jsonl"),
        "{e}"
    );
    tok.set_chat_template(ChatTemplate::chatml());
    let (s, _) = load_dataset(&p, &tok, &opts).unwrap();
    let text = tok.decode(&s[0].input_ids, false).unwrap();
    assert!(text.starts_with("<|im_start|>user"), "{text}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A GGUF SentencePiece vocabulary (llama.cpp's tokenizer, with its own byte offsets) trains the
/// same span of a chat as the HF tokenizers: each reply through its end-of-turn marker.
#[test]
fn a_gguf_sentencepiece_vocabulary_trains_the_replies() {
    use qlora_llama::TokenizerFiles;
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../qlora-llama/tests/fixtures/spm/tiny-spm.gguf");
    let mut tok: Tokenizer = TokenizerFiles::load(&gguf).unwrap();
    tok.set_chat_template(ChatTemplate::chatml());
    let record = json!({"messages": [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "how are you"},
        {"role": "user", "content": "fine thanks"},
        {"role": "assistant", "content": "good to hear"}]});
    let s = sample(&tok, record, "spm-chat");
    let text = tok.decode(&s.input_ids, false).unwrap();
    assert!(text.starts_with("<|im_start|>user"), "{text}");
    let kept: Vec<u32> = s
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    let bare = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(
        bare(&tok.decode(&kept, false).unwrap()),
        bare("how are you<|im_end|>good to hear<|im_end|>")
    );
}
