//! A byte-level BPE `tokenizer.json` for tests: the 256 byte tokens (GPT-2's byte-to-char map)
//! after three ChatML specials, no merges, so every text round-trips and ids stay below 259.
//! Shared by the test targets through `#[path]`.
#![allow(dead_code)]

use std::path::Path;

use serde_json::json;

/// GPT-2's byte → printable-char map (byte-level BPE's symbols), by byte.
pub fn byte_chars() -> Vec<(u32, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, char)> = bs
        .into_iter()
        .zip(cs)
        .map(|(b, c)| (b, char::from_u32(c).expect("a char")))
        .collect();
    pairs.sort();
    pairs
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (eos `<|im_end|>`, no bos; the chat
/// template defaults to ChatML) into `dir`, creating it.
pub fn write(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = serde_json::Map::new();
    for (i, s) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
    {
        vocab.insert(s.to_string(), json!(i));
    }
    for (i, (_, c)) in byte_chars().iter().enumerate() {
        vocab.insert(c.to_string(), json!(i + 3));
    }
    let added: Vec<_> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), spec.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        // ChatML, as SmolLM2 (the default model) ships it.
        json!({"eos_token": "<|im_end|>", "bos_token": null, "chat_template": CHATML}).to_string(),
    )
    .unwrap();
}

/// ChatML, written out (not the library's constant: the fixture is a model's own file).
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
