//! Malformed training data: JSONL and JSON records in the chat, alpaca and text forms.

use std::path::Path;

use burn_qlora::llama::LlamaTokenizer;
use burn_qlora::train::{DataFormat, DataOptions, Overflow, load_dataset};
use serde_json::json;

use crate::Case;

fn read(
    dir: &Path,
    name: &str,
    text: &str,
    format: DataFormat,
    max_len: usize,
) -> Result<(), String> {
    let tok_dir = dir.join("tokenizer");
    crate::byte_tokenizer::write(&tok_dir);
    let tok = LlamaTokenizer::from_dir(&tok_dir).map_err(|e| e.to_string())?;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    load_dataset(&p, &tok, &options(format, max_len))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn options(format: DataFormat, max_len: usize) -> DataOptions {
    DataOptions {
        format,
        max_len,
        overflow: Overflow::Error,
        skip_invalid: false,
        ..DataOptions::default()
    }
}

fn good() -> String {
    json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
        .to_string()
}

fn case(
    name: &'static str,
    file: &'static str,
    want: &'static str,
    format: DataFormat,
    text: impl FnOnce() -> String + 'static,
) -> Case {
    let w: &'static [&'static str] = Box::leak(vec![file, want].into_boxed_slice());
    Case::new(name, w, move |d| read(d, file, &text(), format, 256))
}

pub fn cases() -> Vec<Case> {
    use DataFormat::*;
    vec![
        case(
            "data-broken-line",
            "broken.jsonl",
            ":2: not valid JSON",
            Auto,
            || format!("{}\n{{\"messages\": [\n", good()),
        ),
        case(
            "data-unknown-keys",
            "unknown.jsonl",
            ":2: no `messages`, `conversations`, `prompt` + `completion`, `instruction` or `text`",
            Auto,
            || format!("{}\n{{\"prompt\": \"x\"}}\n", good()),
        ),
        case(
            "data-wrong-role",
            "role.jsonl",
            ":1: message 1: role `bot`",
            Chat,
            || json!({"messages": [{"role": "bot", "content": "x"}]}).to_string(),
        ),
        case(
            "data-no-assistant",
            "noassistant.jsonl",
            "no assistant message",
            Chat,
            || json!({"messages": [{"role": "user", "content": "x"}]}).to_string(),
        ),
        case(
            "data-content-not-string",
            "content.jsonl",
            "field `content` is not a string",
            Chat,
            || json!({"messages": [{"role": "user", "content": 5}]}).to_string(),
        ),
        case(
            "data-messages-not-array",
            "msgs.jsonl",
            "messages",
            Chat,
            || json!({"messages": "hello"}).to_string(),
        ),
        case(
            "data-alpaca-missing-output",
            "alpaca.jsonl",
            "missing field `output`",
            Alpaca,
            || json!({"instruction": "x"}).to_string(),
        ),
        case(
            "data-empty-text",
            "emptytext.jsonl",
            "field `text` is empty",
            Text,
            || json!({"text": "  "}).to_string(),
        ),
        case(
            "data-sharegpt-unknown-role",
            "sharegpt.jsonl",
            ":1: `conversations` message 2: role `bot` is not human, gpt or system",
            Auto,
            || {
                json!({"conversations": [
                    {"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]})
                .to_string()
            },
        ),
        case(
            "data-sharegpt-missing-value",
            "sharegptvalue.jsonl",
            ":1: `conversations` message 1: missing field `value`",
            ShareGpt,
            || json!({"conversations": [{"from": "human"}]}).to_string(),
        ),
        case(
            "data-prompt-completion-mixed",
            "pc.jsonl",
            ":1: `prompt` and `completion` must both be strings or both lists",
            Auto,
            || {
                json!({"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]})
                    .to_string()
            },
        ),
        case(
            "data-prompt-completion-empty",
            "pcempty.jsonl",
            ":1: field `completion` is empty",
            PromptCompletion,
            || json!({"prompt": "a", "completion": " "}).to_string(),
        ),
        case(
            "data-system-twice",
            "system.jsonl",
            ":1: both a `system` field and a system message",
            Chat,
            || {
                json!({"system": "s", "messages": [{"role": "system", "content": "t"},
                    {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
                .to_string()
            },
        ),
        case(
            "data-gzip-not-gzip",
            "notgzip.jsonl.gz",
            "not a readable gzip file",
            Auto,
            good,
        ),
        case(
            "data-json-array-broken",
            "array.json",
            "not valid JSON",
            Auto,
            || "[1, 2".into(),
        ),
        case(
            "data-record-not-object",
            "notobject.jsonl",
            "expected a JSON object",
            Auto,
            || "[1]".into(),
        ),
        case(
            "data-empty-file",
            "empty.jsonl",
            "no usable sample",
            Auto,
            || "\n\n".into(),
        ),
        Case::new("data-not-utf8", &["latin1.jsonl", ":2:", "UTF-8"], |d| {
            let tok_dir = d.join("tokenizer");
            crate::byte_tokenizer::write(&tok_dir);
            let tok = LlamaTokenizer::from_dir(&tok_dir).map_err(|e| e.to_string())?;
            let p = d.join("latin1.jsonl");
            let mut bytes = format!("{}\n", good()).into_bytes();
            bytes.extend(b"{\"text\": \"caf\xe9\"}\n");
            std::fs::write(&p, bytes).unwrap();
            load_dataset(&p, &tok, &options(Auto, 256))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        Case::new(
            "data-too-long",
            &["long.jsonl", ":1:", "exceed the maximum length 64"],
            |d| {
                let long = json!({"messages": [
                {"role": "user", "content": "x".repeat(50)},
                {"role": "assistant", "content": "y".repeat(50)}]});
                read(d, "long.jsonl", &long.to_string(), Auto, 64)
            },
        ),
        // Token ids from a tokenizer of another (larger-vocabulary) model.
        Case::new(
            "data-ids-past-vocab",
            &["token id 600", "vocabulary of 512"],
            |_| {
                use burn_qlora::llama::LlamaForCausalLM;
                use burn_qlora::nn::{LoraApplier, LoraConfig, ModuleSelector};
                use burn_qlora::train::{Sample, TrainConfig, Trainer};
                let device = burn::tensor::Device::flex().autodiff();
                let lora = LoraConfig {
                    target_modules: Some(ModuleSelector::Pattern("all-linear".into())),
                    ..LoraConfig::default()
                };
                let applier =
                    LoraApplier::new(lora.clone(), None, &device).map_err(|e| e.to_string())?;
                let model = LlamaForCausalLM::load(crate::fixture("tiny-llama"), &applier)
                    .map_err(|e| e.to_string())?;
                let sample = Sample::new(vec![5, 600, 7], vec![-100, 600, 7]);
                Trainer::new(
                    model,
                    lora,
                    "default",
                    vec![sample],
                    vec![],
                    0,
                    TrainConfig::default(),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            },
        ),
        Case::new("data-missing-file", &["absent.jsonl"], |d| {
            let tok_dir = d.join("tokenizer");
            crate::byte_tokenizer::write(&tok_dir);
            let tok = LlamaTokenizer::from_dir(&tok_dir).map_err(|e| e.to_string())?;
            load_dataset(d.join("absent.jsonl"), &tok, &options(Auto, 256))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    ]
}
