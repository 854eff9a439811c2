//! The `tokenizer.*` metadata of a GGUF model file ([`crate::LlamaForCausalLM::save_gguf`]), as
//! llama.cpp's `convert_hf_to_gguf.py` writes it: a GGUF base's own keys whole; a HF folder's
//! SentencePiece `tokenizer.model` where it has one (`gguf_export_spm`, as the converter
//! prefers it); or its byte-level BPE `tokenizer.json` (`tokenizer.ggml.model = "gpt2"`, the
//! pre-tokenizer's llama.cpp name, tokens by id with ids the vocabulary skips as `[PAD<id>]`,
//! types: special added tokens control, other added tokens user-defined, the rest normal;
//! merges as `"a b"`; bos/eos/pad ids; whether bos/eos are added; the chat template). LLaMA and
//! Mistral folders also carry `add_prefix_space` over as `add_space_prefix`.

use std::path::Path;

use serde_json::Value;

use crate::gguf::{GgufFile, GgufValue};
use crate::gguf_export_spm::{json_file, spm_tokenizer_meta};
use crate::spm_model::{CONTROL, NORMAL, UNUSED, USER_DEFINED};
use crate::{LlamaError, LlamaTokenizer as Tokenizer, ModelType};

/// Whether the folder's `tokenizer_config.json` declares a `GPT2Tokenizer` (Phi-4-mini's:
/// the converter's Phi-3 class then reads the vocabulary as BPE).
fn gpt2_class(dir: &Path) -> Result<bool, LlamaError> {
    Ok(json_file(dir, "tokenizer_config.json")?
        .is_some_and(|v| v["tokenizer_class"] == "GPT2Tokenizer"))
}

/// The `tokenizer.*` metadata for the base at `source` (a `.gguf` file: its own keys; a HF
/// folder: its SentencePiece `tokenizer.model` where it has one, as the converter prefers it,
/// else its byte-level BPE `tokenizer.json`), one token per row of a model of `vocab_size`
/// rows as the converter pads (a BPE id past it is an error, as there). `family` picks the
/// converter class's reading (Phi-3's of added tokens; a Phi-3 folder whose tokenizer is a
/// `GPT2Tokenizer` is read as BPE).
pub(crate) fn tokenizer_meta(
    source: &Path,
    vocab_size: usize,
    family: ModelType,
) -> Result<Vec<(String, GgufValue)>, LlamaError> {
    if source.is_file() {
        let f = GgufFile::open(source)?;
        return Ok(f
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect());
    }
    let mut meta = hf_tokenizer_meta(source, vocab_size, family)?;
    // The converter's LlamaModel (LLaMA, Mistral) carries tokenizer_config.json's
    // add_prefix_space over, whichever vocabulary it writes.
    if matches!(family, ModelType::Llama | ModelType::Mistral)
        && let Some(v) = json_file(source, "tokenizer_config.json")?
            .and_then(|c| c["add_prefix_space"].as_bool())
    {
        meta.push(("tokenizer.ggml.add_space_prefix".into(), GgufValue::Bool(v)));
    }
    Ok(meta)
}

/// A HF folder's vocabulary as GGUF metadata (see [`tokenizer_meta`]).
fn hf_tokenizer_meta(
    source: &Path,
    vocab_size: usize,
    family: ModelType,
) -> Result<Vec<(String, GgufValue)>, LlamaError> {
    let phi3 = family == ModelType::Phi3;
    if source.join("tokenizer.model").is_file() && !(phi3 && gpt2_class(source)?) {
        let mut meta = spm_tokenizer_meta(source, vocab_size, phi3)?;
        if family == ModelType::Gemma3 {
            // Gemma's tokenizer adds no leading space (the converter's Gemma3Model says so).
            meta.push((
                "tokenizer.ggml.add_space_prefix".into(),
                GgufValue::Bool(false),
            ));
        }
        return Ok(meta);
    }
    let file = source.join("tokenizer.json");
    if family == ModelType::Gemma3 {
        // The converter's Gemma 3 class cuts the embedding to such a vocabulary's length while
        // listing every row's token: a file llama.cpp would not load.
        return Err(LlamaError::format(
            source.join("tokenizer.model"),
            "a Gemma 3 model's tokenizer is written from its SentencePiece tokenizer.model, \
             which this folder lacks (or give a GGUF base as the tokenizer source)"
                .to_string(),
        ));
    }
    let bad = |problem: String| LlamaError::format(&file, problem);
    let text = std::fs::read_to_string(&file).map_err(|e| LlamaError::io(&file, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" || json["decoder"]["type"] != "ByteLevel" {
        return Err(bad(
            "neither a byte-level BPE tokenizer nor, beside it, a SentencePiece tokenizer.model \
             (which the converter reads SentencePiece vocabularies from)"
                .into(),
        ));
    }
    let pre = qlora_tokenizer::gguf_pre_name(&json["pre_tokenizer"]).ok_or_else(|| {
        bad(
            "its pre-tokenizer is none that llama.cpp names here (gpt-2, smollm, llama-bpe, qwen2)"
                .into(),
        )
    })?;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |t: &str, id: Option<u64>, ty: i32| -> Result<(), LlamaError> {
        let id = id.ok_or_else(|| bad(format!("token `{t}` has no integer id")))? as usize;
        if id >= tokens.len() {
            // The converter refuses it too: llama.cpp will not load more tokens than rows.
            return Err(bad(format!(
                "token `{t}` has id {id}, past the model's vocab_size {vocab_size}"
            )));
        }
        tokens[id] = Some((t.to_string(), ty));
        Ok(())
    };
    for (t, id) in vocab {
        put(t, id.as_u64(), NORMAL)?;
    }
    for a in json["added_tokens"].as_array().into_iter().flatten() {
        let t = a["content"].as_str().unwrap_or_default();
        put(
            t,
            a["id"].as_u64(),
            if a["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            },
        )?;
    }
    let (tokens, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some((t, ty)) => (GgufValue::Str(t), GgufValue::I32(ty)),
            None => (GgufValue::Str(format!("[PAD{i}]")), GgufValue::I32(UNUSED)),
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is missing".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) => match (
                p.first().and_then(Value::as_str),
                p.get(1).and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) if p.len() == 2 => Some(format!("{a} {b}")),
                _ => None,
            },
            _ => None,
        })
        .map(|m| {
            m.map(GgufValue::Str)
                .ok_or_else(|| bad("a merge is neither \"a b\" nor a pair".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tok = Tokenizer::from_dir(source)?;
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), GgufValue::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
    ];
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    for (k, id) in [
        ("bos_token_id", id_of(&tok.bos_token)),
        ("eos_token_id", id_of(&tok.eos_token)),
        ("padding_token_id", id_of(&tok.pad_token)),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{k}"), GgufValue::U32(id)));
        }
    }
    // Whether encoding adds bos / eos, as the tokenizer does it (its post-processor or flags).
    let probe = tok.encode("a", true)?;
    let plain = tok.encode("a", false)?;
    let adds_bos = probe.len() > plain.len() && probe.first() == tok.bos_id().as_ref();
    let adds_eos = probe.len() > plain.len() && probe.last() == tok.eos_id().as_ref();
    meta.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(adds_bos),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".into(),
        GgufValue::Bool(adds_eos),
    ));
    if tok.chat_template.is_usable() {
        meta.push((
            "tokenizer.chat_template".into(),
            GgufValue::Str(tok.chat_template.source().to_string()),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::tokenizer_meta;
    use crate::{GgufFile, GgufValue, GgufWriter, LlamaTokenizer, ModelType, TokenizerFiles};

    fn tokenizer_dir(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizers")
            .join(name)
    }

    /// The converter's LlamaModel writes tokenizer_config.json's `add_prefix_space` as
    /// `add_space_prefix` (for LLaMA and Mistral folders; Phi-3's class does not).
    #[test]
    fn add_prefix_space_is_carried_over_for_llama_and_mistral() {
        let dir = crate::gguf_export_spm::spm_fixture_copy("prefix space", |tc| {
            tc["add_prefix_space"] = serde_json::Value::Bool(false)
        });
        let key = "tokenizer.ggml.add_space_prefix";
        for (family, want) in [
            (ModelType::Llama, Some(GgufValue::Bool(false))),
            (ModelType::Mistral, Some(GgufValue::Bool(false))),
            (ModelType::Phi3, None),
            (ModelType::Gemma3, Some(GgufValue::Bool(false))),
        ] {
            let meta = tokenizer_meta(&dir, 407, family).unwrap();
            let found: Vec<_> = meta
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .collect();
            assert_eq!(found.first().cloned(), want, "{family:?}");
            assert!(found.len() <= 1, "{family:?}: the key twice");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A HF tokenizer written as GGUF metadata and read back tokenizes as the HF one does, under
    /// the pre-tokenizer name llama.cpp gives it.
    #[test]
    fn hf_bpe_tokenizers_round_trip_through_gguf_metadata() {
        for (name, pre) in [
            ("qwen2_5", "qwen2"),
            ("qwen3", "qwen2"),
            ("llama3", "llama-bpe"),
        ] {
            let dir = tokenizer_dir(name);
            let hf = LlamaTokenizer::from_dir(&dir).unwrap();
            let mut w = GgufWriter::new();
            for (k, v) in tokenizer_meta(&dir, hf.vocab_size(), crate::ModelType::Llama).unwrap() {
                w.meta(&k, v);
            }
            let path =
                std::env::temp_dir().join(format!("qlora-tok-{name}-{}.gguf", std::process::id()));
            w.write(&path).unwrap();
            let f = GgufFile::open(&path).unwrap();
            assert_eq!(
                f.get("tokenizer.ggml.pre"),
                Some(&GgufValue::Str(pre.into())),
                "{name}"
            );
            let gguf = LlamaTokenizer::from_gguf(&f).unwrap();
            for text in [
                "Hello world, 12345 apples!",
                "  two  spaces\n\nand lines 2024-12-07",
                "Ünïcödé — 数字 42",
            ] {
                assert_eq!(
                    gguf.encode(text, false).unwrap(),
                    hf.encode(text, false).unwrap(),
                    "{name}: {text:?}"
                );
            }
            std::fs::remove_file(&path).unwrap();
        }
    }
}
