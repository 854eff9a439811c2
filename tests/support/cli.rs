//! Running the example binaries from integration tests, on the golden tiny LLaMA with a
//! byte-level tokenizer. Shared by the test targets through `#[path]` (next to
//! `byte_tokenizer.rs`, which the including file declares as `byte_tokenizer`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

use crate::byte_tokenizer;

pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo test` without a target filter, or `cargo build --release --examples` first",
        bin.display()
    );
    bin
}

pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name))
        .args(args)
        .output()
        .expect("run example")
}

pub fn ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The golden tiny LLaMA (f32, vocab 512) with a byte-level tokenizer beside it.
pub fn tiny_model(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/tiny-llama");
    let dir = tmp(&format!("{name}-model"));
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    byte_tokenizer::write(&dir);
    dir
}

/// A tiny model and a work folder holding the conversations of [`chat_data`], for one test;
/// both folders are removed when it is dropped.
pub struct TinyRun {
    pub model: PathBuf,
    pub work: PathBuf,
    pub data: PathBuf,
}

impl TinyRun {
    pub fn new(name: &str) -> Self {
        let model = tiny_model(name);
        let work = tmp(&format!("{name}-work"));
        let data = chat_data(&work);
        Self { model, work, data }
    }

    /// `finetune`'s arguments for the tiny run into `out` for `steps` steps (batch 2 × 32 tokens,
    /// Flex, no sample answers), then `extra`.
    pub fn finetune_args<'a>(
        &'a self,
        out: &'a Path,
        steps: &'a str,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec![
            "--model",
            self.model.to_str().unwrap(),
            "--data",
            self.data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            steps,
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--device",
            "flex",
            "--no-samples",
        ];
        args.extend_from_slice(extra);
        args
    }
}

impl Drop for TinyRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
        let _ = std::fs::remove_dir_all(&self.model);
    }
}

/// Conversations with a pattern the adapters can learn: the reply repeats the question's word.
pub fn chat_data(dir: &Path) -> PathBuf {
    let words = [
        "apple", "river", "stone", "cloud", "green", "tiger", "piano", "lemon",
    ];
    let lines: Vec<String> = (0..32)
        .map(|i| {
            let w = words[i % words.len()];
            json!({"messages": [
                {"role": "user", "content": format!("say {w}")},
                {"role": "assistant", "content": format!("{w} {w}")}
            ]})
            .to_string()
        })
        .collect();
    let p = dir.join("chat.jsonl");
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// `mean_loss L perplexity P tokens N` → (L, P, N).
pub fn scores(out: &str) -> (f64, f64, usize) {
    let line = out
        .lines()
        .find(|l| l.starts_with("mean_loss "))
        .unwrap_or_else(|| panic!("no score line in:\n{out}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (w[0], w[2], w[4]),
        ("mean_loss", "perplexity", "tokens"),
        "{line}"
    );
    (
        w[1].parse().unwrap(),
        w[3].parse().unwrap(),
        w[5].parse().unwrap(),
    )
}
