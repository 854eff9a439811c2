//! What the data tests share: the six family tokenizers of `tests/fixtures/tokenizers/` and
//! TRL's ids and trained tokens for the records of each data form (`forms.json`, made by
//! `tests/fixtures/scripts/make_data_forms.py`).

#![allow(dead_code)]

use std::path::PathBuf;

use qlora_nn::IGNORE_INDEX;
use qlora_tokenizer::{ChatTemplate, Tokenizer};
use qlora_train::Sample;
use serde_json::Value;

pub const FAMILIES: [&str; 6] = ["llama3", "mistral", "qwen2_5", "qwen3", "phi3", "gemma3"];

/// A folder under the repository's `tests/fixtures/`.
pub fn fixtures(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn dir(family: &str) -> PathBuf {
    fixtures("tokenizers").join(family)
}

/// The family's tokenizer with TRL's training template where it has one (what
/// `SFTTrainer(assistant_only_loss=True)` swaps in), and whether it has.
pub fn tokenizer(family: &str) -> (Tokenizer, bool) {
    let mut tok = Tokenizer::from_dir(dir(family)).unwrap();
    let training = dir(family).join("trl_training.jinja");
    let has = training.is_file();
    if has {
        tok.set_chat_template(ChatTemplate::from_file(&training).unwrap());
    }
    (tok, has)
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn trained(s: &Sample) -> Vec<bool> {
    s.labels.iter().map(|&l| l != IGNORE_INDEX).collect()
}

/// The family's cases: `{form, record, ids, mask}`.
pub fn cases(family: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir(family).join("forms.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Checks `got` against TRL's case for each of `records` (in order): the same ids, and the same
/// trained tokens where TRL's masks were recorded; `None` where the family has no case for one
/// of the records (Mistral's template refuses system turns), else how many masks compared.
pub fn check_against_trl(
    family: &str,
    records: &[Value],
    got: &[Sample],
    what: &str,
) -> Option<usize> {
    let cases = cases(family);
    let want: Vec<&Value> = records
        .iter()
        .map(|r| cases.iter().find(|c| &c["record"] == r))
        .collect::<Option<_>>()?;
    assert_eq!(got.len(), want.len(), "{what}: samples");
    let mut masks = 0;
    for (k, (s, case)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            s.input_ids,
            ids(&case["ids"]),
            "{what}: record {k}: TRL's ids"
        );
        if let Some(mask) = case.get("mask") {
            let m: Vec<bool> = mask.as_array().unwrap().iter().map(|m| m == 1).collect();
            assert_eq!(trained(s), m, "{what}: record {k}: TRL's trained tokens");
            masks += 1;
        } else {
            assert!(
                trained(s).iter().any(|&t| t),
                "{what}: record {k}: a reply trains"
            );
        }
    }
    Some(masks)
}
