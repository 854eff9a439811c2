//! A GGUF SentencePiece vocabulary (`tokenizer.ggml.model = llama`, as Llama 2, Mistral and
//! Gemma GGUFs carry) tokenizes as the SentencePiece library does: score-ordered merges, the
//! dummy-prefix space, `<0xXX>` byte fallback; control and user-defined tokens in text are
//! matched whole as llama.cpp matches them. The GGUF and the reference ids come from
//! `tests/fixtures/scripts/make_spm_gguf.py` (Python `sentencepiece` + `gguf`).

use std::path::PathBuf;

use qlora_llama::{LlamaTokenizer, TokenizerFiles};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm")
}

fn load() -> (LlamaTokenizer, Value) {
    let tok = LlamaTokenizer::load(fixtures().join("tiny-spm.gguf")).unwrap();
    let text = std::fs::read_to_string(fixtures().join("spm_ids.json")).unwrap();
    (tok, serde_json::from_str(&text).unwrap())
}

/// The plain and the special-token cases of the reference.
fn every_case(cases: &Value) -> impl Iterator<Item = &Value> {
    cases["plain"]
        .as_array()
        .unwrap()
        .iter()
        .chain(cases["special"].as_array().unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn sentencepiece_gguf_encodes_and_decodes_as_sentencepiece() {
    let (tok, cases) = load();
    assert_eq!(
        tok.vocab_size() as u64,
        cases["vocab_size"].as_u64().unwrap()
    );
    let plain = cases["plain"].as_array().unwrap();
    assert!(plain.len() > 15);
    for case in plain {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, want, "encoding {text:?}");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding {want:?}"
        );
    }
}

#[test]
fn control_and_user_tokens_in_text_are_matched_whole_as_llama_cpp_does() {
    let (tok, cases) = load();
    for case in cases["special"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "encoding {text:?}"
        );
    }
}

#[test]
fn sentencepiece_gguf_adds_bos_and_skips_it_when_decoding() {
    let (tok, cases) = load();
    let bos = cases["bos_id"].as_u64().unwrap() as u32;
    let eos = cases["eos_id"].as_u64().unwrap() as u32;
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(bos), Some(eos)));
    let with = tok.encode("Hello world", true).unwrap();
    assert_eq!(with[0], bos);
    assert_eq!(&with[1..], &tok.encode("Hello world", false).unwrap()[..]);
    assert_eq!(tok.decode(&with, true).unwrap(), "Hello world");
    assert_eq!(tok.decode(&with, false).unwrap(), "<s> Hello world");
}

/// Each token's byte range in the text (what chat data's trained-token masks are found with):
/// the ranges follow one another, cover the text, and hold the token's own text (`▁` a space,
/// the dummy prefix of a fragment's first piece not in the text; byte tokens share the range of
/// the piece they spell).
#[test]
fn sentencepiece_offsets_locate_every_token_in_the_text() {
    let (tok, cases) = load();
    let mut checked = 0;
    for case in every_case(&cases) {
        let text = case["text"].as_str().unwrap();
        let (ids, offsets) = tok.encode_with_offsets(text, false).unwrap();
        assert_eq!(ids, tok.encode(text, false).unwrap(), "{text:?}");
        assert_eq!(ids.len(), offsets.len());
        let (mut start, mut end) = (0, 0);
        for (&id, &(s, e)) in ids.iter().zip(&offsets) {
            assert!(s <= e && e <= text.len(), "{text:?}: range {s}..{e}");
            assert!(
                s >= start,
                "{text:?}: range {s}..{e} starts before the last one"
            );
            let piece = tok.token_text(id).unwrap();
            if !piece.starts_with("<0x") {
                let want = piece.replace('▁', " ");
                let got = &text[s..e];
                assert!(
                    got == want || want.strip_prefix(' ') == Some(got),
                    "{text:?}: token {piece:?} at {s}..{e} is {got:?}"
                );
            }
            (start, end) = (s, e);
            checked += 1;
        }
        if !text.is_empty() {
            assert_eq!(end, text.len(), "{text:?}: the last token ends the text");
        }
    }
    assert!(checked > 100, "{checked} tokens checked");
}

/// Written as HF files (what `merge` does with a GGUF base), the SentencePiece vocabulary
/// becomes a `tokenizer.json` BPE with byte fallback that gives sentencepiece's ids, special
/// tokens matched whole, and the bos the GGUF adds.
#[test]
fn sentencepiece_gguf_written_as_tokenizer_json_gives_the_same_ids() {
    let (tok, cases) = load();
    let dir = std::env::temp_dir().join(format!("qlora-spm-hf-{}", std::process::id()));
    tok.save_dir(&dir).unwrap();
    let back = LlamaTokenizer::from_dir(&dir).unwrap();
    let mut checked = 0;
    for case in every_case(&cases) {
        let text = case["text"].as_str().unwrap();
        for special in [false, true] {
            assert_eq!(
                back.encode(text, special).unwrap(),
                tok.encode(text, special).unwrap(),
                "{text:?} (special tokens {special})"
            );
        }
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(
            back.decode(&ids, true).unwrap(),
            tok.decode(&ids, true).unwrap(),
            "decoding {text:?}"
        );
        checked += 1;
    }
    assert!(checked > 15);
    assert_eq!((back.bos_id(), back.eos_id()), (tok.bos_id(), tok.eos_id()));
    std::fs::remove_dir_all(&dir).unwrap();
}
