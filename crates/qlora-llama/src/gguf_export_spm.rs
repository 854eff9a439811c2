//! A HF folder's SentencePiece tokenizer (`tokenizer.model`: Llama 2, Mistral, Phi-3-mini,
//! Gemma) as GGUF `tokenizer.*` metadata, as llama.cpp's `convert_hf_to_gguf.py` writes it
//! (`_create_vocab_sentencepiece`, `Phi3MiniModel.set_vocab`, gguf-py's `SpecialVocab`):
//!
//! - `tokenizer.ggml.model = "llama"`, `pre = "default"`;
//! - one token per row of the model: the model's pieces by id with their scores and types
//!   (normal 1, unknown 2, control 3, unused 5, byte 6; the model's user-defined pieces count as
//!   normal, as `sentencepiece`'s `Is*` calls leave them), then `added_tokens.json` (user
//!   defined, score −1000), then `tokenizer_config.json`'s `added_tokens_decoder` (score −1000;
//!   control when special or when it looks special, `<|…|>` and the like, else user defined
//!   with `▁` written as a space); Phi-3's class also takes `tokenizer.json`'s `added_tokens`
//!   and marks only the special ones control. Rows without a token are `[PAD<id>]`, unused,
//!   score −10000; pieces past the model's rows are left out;
//! - the special tokens as `SpecialVocab` finds them: `tokenizer_config.json`'s `bos_token`,
//!   `eos_token`, ... by their content among `tokenizer.json`'s added tokens, then
//!   `config.json`'s `*_token_id`; whether bos / eos are added from `tokenizer.json`'s
//!   post-processor (a `TemplateProcessing` that starts with bos / ends with eos), else
//!   `tokenizer_config.json`'s `add_bos_token` / `add_eos_token`; the chat template.
//!
//! `tokenizer.model` itself is read by [`crate::spm_model`].

use std::path::Path;

use serde_json::Value;

use crate::LlamaError;
use crate::gguf::GgufValue;
use crate::spm_model::{BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, read_pieces};

/// A JSON file of the folder, `None` where it is absent.
pub(crate) fn json_file(dir: &Path, name: &str) -> Result<Option<Value>, LlamaError> {
    let path = dir.join(name);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| LlamaError::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LlamaError::format(&path, format!("not valid JSON: {e}")))
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The `tokenizer.*` metadata of the SentencePiece folder `dir` for a model of `vocab_size`
/// rows (see the module docs); `phi3` selects `Phi3MiniModel`'s reading of the added tokens.
pub(crate) fn spm_tokenizer_meta(
    dir: &Path,
    vocab_size: usize,
    phi3: bool,
) -> Result<Vec<(String, GgufValue)>, LlamaError> {
    let pieces = read_pieces(&dir.join("tokenizer.model"))?;
    let mut tokens: Vec<(String, f32, i32)> = (0..vocab_size)
        .map(|i| (format!("[PAD{i}]"), -10000.0, UNUSED))
        .collect();
    for (row, (text, score, ty)) in tokens.iter_mut().zip(pieces) {
        let ty = match ty {
            UNKNOWN | CONTROL | UNUSED | BYTE => ty,
            _ => NORMAL,
        };
        *row = (text, score, ty);
    }
    let config = json_file(dir, "tokenizer_config.json")?;
    let tokenizer_json = json_file(dir, "tokenizer.json")?;
    let mut put = |id: u64, text: &str, ty: i32| {
        if let Some(row) = usize::try_from(id).ok().and_then(|i| tokens.get_mut(i)) {
            *row = (text.to_string(), -1000.0, ty);
        }
    };
    if let Some(Value::Object(added)) = json_file(dir, "added_tokens.json")? {
        for (t, id) in added {
            if let Some(id) = id.as_u64() {
                put(id, &t, USER_DEFINED);
            }
        }
    }
    let decoder = config
        .as_ref()
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Value::as_object);
    for (id, data) in decoder.into_iter().flatten() {
        let (Ok(id), Some(text)) = (id.parse::<u64>(), data["content"].as_str()) else {
            continue;
        };
        let special = data["special"] == true;
        if phi3 {
            put(id, text, if special { CONTROL } else { USER_DEFINED });
        } else if special || looks_special(text) {
            put(id, text, CONTROL);
        } else {
            put(id, &text.replace('\u{2581}', " "), USER_DEFINED);
        }
    }
    let added_tokens: Vec<Value> = tokenizer_json
        .as_ref()
        .and_then(|t| t["added_tokens"].as_array().cloned())
        .unwrap_or_default();
    if phi3 {
        for a in &added_tokens {
            if let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) {
                put(
                    id,
                    text,
                    if a["special"] == true {
                        CONTROL
                    } else {
                        USER_DEFINED
                    },
                );
            }
        }
    }
    let n = tokens.len();
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::Str("llama".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            GgufValue::Str("default".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.iter().map(|t| GgufValue::Str(t.0.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(tokens.iter().map(|t| GgufValue::F32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(tokens.iter().map(|t| GgufValue::I32(t.2)).collect()),
        ),
    ];
    meta.extend(special_vocab(
        dir,
        config.as_ref(),
        tokenizer_json.as_ref(),
        &added_tokens,
        n,
    )?);
    Ok(meta)
}

/// gguf-py's `SpecialVocab` (`load_merges=False`), step by step: the special tokens'
/// `tokenizer_config.json` entries as it reads them (raw: an `AddedToken` object is not its
/// content there), adjusted by `tokenizer.json`'s post-processor (a template's leading special
/// token becomes bos where none is named, a trailing one other than eos becomes eos and the
/// old eos `eot`), ids by content among `tokenizer.json`'s added tokens, then `config.json`'s
/// `*_token_id`; whether bos / eos are added; the chat template. The separator flag of a
/// template's pair form (a BERT matter) and the CodeLlama FIM ids are not written.
fn special_vocab(
    dir: &Path,
    config: Option<&Value>,
    tokenizer_json: Option<&Value>,
    added_tokens: &[Value],
    n_vocab: usize,
) -> Result<Vec<(String, GgufValue)>, LlamaError> {
    let key = |typ: &str| match typ {
        "unk" => "unknown_token_id".to_string(),
        // llama.cpp spells the separator's key so.
        "sep" => "seperator_token_id".to_string(),
        "pad" => "padding_token_id".to_string(),
        t => format!("{t}_token_id"),
    };
    let mut types: Vec<&str> = vec!["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    // The converter's working copy of tokenizer_config.json (None: there is none).
    let mut tc: Option<serde_json::Map<String, Value>> =
        config.and_then(|c| c.as_object().cloned());
    let truthy =
        |v: &Value| !matches!(v, Value::Null | Value::Bool(false)) && v.as_str() != Some("");
    let raw = |tc: &Option<serde_json::Map<String, Value>>, typ: &str| {
        tc.as_ref()
            .and_then(|m| m.get(&format!("{typ}_token")))
            .filter(|v| truthy(v))
            .cloned()
    };
    let mut add: Vec<(&str, bool)> = Vec::new();
    let set_add = |add: &mut Vec<(&str, bool)>, typ: &'static str, v: bool, force: bool| match add
        .iter_mut()
        .find(|(t, _)| *t == typ)
    {
        Some(entry) if force => entry.1 = v,
        Some(_) => {}
        None => add.push((typ, v)),
    };
    if let Some(tj) = tokenizer_json {
        let (mut bos, mut cls) = (raw(&tc, "bos"), raw(&tc, "cls"));
        let mut eos = raw(&tc, "eos");
        let sep = raw(&tc, "sep");
        if let Some(m) = tc.as_mut() {
            if bos.is_none() && cls.is_some() {
                bos = cls.clone();
                m.insert("bos_token".into(), bos.clone().unwrap_or_default());
            }
            if eos.is_none() && sep.is_some() {
                eos = sep.clone();
                m.insert("eos_token".into(), eos.clone().unwrap_or_default());
            }
        }
        let pp = tj.get("post_processor").filter(|v| !v.is_null());
        let list = pp.map_or_else(Vec::new, |pp| {
            pp["processors"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![pp.clone()])
        });
        for p in list {
            match p["type"].as_str() {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, false);
                    set_add(&mut add, "eos", false, false);
                }
                Some("RobertaProcessing") => {
                    for t in ["bos", "eos", "sep"] {
                        set_add(&mut add, t, true, true);
                    }
                }
                Some("TemplateProcessing") => {
                    let single = p["single"].as_array().cloned().unwrap_or_default();
                    if single.len() < 2 {
                        continue;
                    }
                    let special = |v: &Value| {
                        v["SpecialToken"]["id"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .map(|s| Value::String(s.into()))
                    };
                    if let Some(first) = special(&single[0]) {
                        match tc.as_mut() {
                            None => bos = Some(first.clone()),
                            Some(m)
                                if Some(&first) != bos.as_ref() && Some(&first) != cls.as_ref() =>
                            {
                                if bos.is_none() {
                                    bos = Some(first.clone());
                                    m.insert("bos_token".into(), first.clone());
                                }
                                if cls.is_none() {
                                    cls = Some(first.clone());
                                    m.insert("cls_token".into(), first.clone());
                                }
                            }
                            Some(_) => {}
                        }
                        let is_bos = Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref();
                        set_add(&mut add, "bos", is_bos, true);
                    }
                    if let Some(last) = special(&single[single.len() - 1]) {
                        match tc.as_mut() {
                            None => eos = Some(last.clone()),
                            Some(m) if Some(&last) != eos.as_ref() => {
                                let old = eos.clone().unwrap_or_default();
                                for extra in ["eot", "eom"] {
                                    if !types.contains(&extra) {
                                        types.push(extra);
                                        m.insert(format!("{extra}_token"), old);
                                        break;
                                    }
                                }
                                eos = Some(last.clone());
                                m.insert("eos_token".into(), last.clone());
                            }
                            Some(_) => {}
                        }
                        set_add(&mut add, "eos", Some(&last) == eos.as_ref(), true);
                    }
                }
                _ => {}
            }
        }
    }
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut template = None;
    if let Some(tc) = &tc {
        template = match tc.get("chat_template") {
            Some(Value::String(t)) => Some(t.clone()),
            Some(Value::Null) | None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    Some(std::fs::read_to_string(&jinja).map_err(|e| LlamaError::io(&jinja, e))?)
                } else {
                    json_file(dir, "chat_template.json")?
                        .and_then(|v| v["chat_template"].as_str().map(str::to_string))
                }
            }
            Some(_) => {
                return Err(LlamaError::format(
                    dir.join("tokenizer_config.json"),
                    "chat_template is a list of named templates, which this writer does not \
                     write yet"
                        .to_string(),
                ));
            }
        };
        for &typ in &types {
            if let Some(v) = tc.get(&format!("add_{typ}_token")).and_then(Value::as_bool) {
                // Only bos / eos matter to llama.cpp; the converter's sep flag is a BERT one.
                if typ == "bos" || typ == "eos" {
                    set_add(&mut add, typ, v, false);
                }
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Value::String(c)) => Some(c.clone()),
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(String::from)
                }
                _ => None,
            };
            let id = content.and_then(|c| {
                added_tokens
                    .iter()
                    .find(|a| a["content"].as_str() == Some(c.as_str()))
                    .and_then(|a| a["id"].as_u64())
            });
            if let Some(id) = id.filter(|&id| (id as usize) < n_vocab)
                && !ids.iter().any(|(t, _)| *t == typ)
            {
                ids.push((typ, id as u32));
            }
        }
    }
    if let Some(model_config) = json_file(dir, "config.json")? {
        for &typ in &types {
            let id = model_config[format!("{typ}_token_id")].as_u64();
            if let Some(id) = id.filter(|&id| (id as usize) < n_vocab)
                && !ids.iter().any(|(t, _)| *t == typ)
            {
                ids.push((typ, id as u32));
            }
        }
    }
    let mut meta: Vec<(String, GgufValue)> = ids
        .iter()
        .map(|(typ, id)| (format!("tokenizer.ggml.{}", key(typ)), GgufValue::U32(*id)))
        .collect();
    for (typ, v) in add {
        if typ == "bos" || typ == "eos" {
            meta.push((
                format!("tokenizer.ggml.add_{typ}_token"),
                GgufValue::Bool(v),
            ));
        }
    }
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), GgufValue::Str(t)));
    }
    Ok(meta)
}

/// A copy of the `gguf-merged/spm` fixture in a temporary folder named by `tag`, its
/// `tokenizer_config.json` changed by `edit` (set to null: left out).
#[cfg(test)]
pub(crate) fn spm_fixture_copy(tag: &str, edit: impl FnOnce(&mut Value)) -> std::path::PathBuf {
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gguf-merged/spm");
    let dir = std::env::temp_dir().join(format!(
        "qlora-spm-{}-{}",
        tag.replace(' ', "-"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer.model", "config.json"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let mut tc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    edit(&mut tc);
    if !tc.is_null() {
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case: name, the special ids, the add flags and whether a chat template is written.
    type SpecialCase = (
        &'static str,
        &'static [(&'static str, u32)],
        &'static [(&'static str, bool)],
        bool,
    );

    /// gguf-py's `SpecialVocab` on the `gguf-merged/spm` fixture and on copies of it with the
    /// tokenizer_config.json changed (what it returned, run on each: ids, add flags, whether a
    /// chat template is there).
    #[test]
    fn special_tokens_are_found_as_gguf_py_finds_them() {
        let cases: [SpecialCase; 4] = [
            (
                "as is",
                &[("bos", 1), ("eos", 2), ("unknown", 0)],
                &[("bos", true), ("eos", false)],
                true,
            ),
            // No bos named: the template's leading <s> becomes bos and cls.
            (
                "bos null",
                &[("bos", 1), ("eos", 2), ("unknown", 0), ("cls", 1)],
                &[("bos", true), ("eos", false)],
                true,
            ),
            // An AddedToken object is not its content to the template check (Llama 2's form).
            (
                "bos object",
                &[("bos", 1), ("eos", 2), ("unknown", 0), ("cls", 1)],
                &[("bos", true), ("eos", false)],
                true,
            ),
            // No tokenizer_config.json: ids from config.json, the flag from the template.
            (
                "no config",
                &[("bos", 1), ("eos", 2)],
                &[("bos", true)],
                false,
            ),
        ];
        for (name, want_ids, want_add, template) in cases {
            let dir = spm_fixture_copy(name, |tc| match name {
                "bos null" => tc["bos_token"] = Value::Null,
                "bos object" => {
                    tc["bos_token"] = serde_json::json!({"content": "<s>", "lstrip": false,
                        "normalized": false, "rstrip": false, "single_word": false,
                        "__type": "AddedToken"})
                }
                "no config" => *tc = Value::Null,
                _ => {}
            });
            let meta = spm_tokenizer_meta(&dir, 407, false).unwrap();
            let get = |k: &str| {
                meta.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            for kind in [
                "bos",
                "eos",
                "unknown",
                "seperator",
                "padding",
                "cls",
                "mask",
                "eot",
            ] {
                let want = want_ids
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, id)| GgufValue::U32(*id));
                assert_eq!(
                    get(&format!("tokenizer.ggml.{kind}_token_id")),
                    want,
                    "{name}: {kind}"
                );
            }
            for kind in ["bos", "eos"] {
                let want = want_add
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, v)| GgufValue::Bool(*v));
                assert_eq!(
                    get(&format!("tokenizer.ggml.add_{kind}_token")),
                    want,
                    "{name}: add {kind}"
                );
            }
            assert_eq!(
                get("tokenizer.chat_template").is_some(),
                template,
                "{name}: template"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn looks_special_as_the_converter() {
        for t in ["<|im_end|>", "<pad>", "<unused12>", "<mask>"] {
            assert!(looks_special(t), "{t}");
        }
        for t in ["plainword", "<s>", "<|im_end"] {
            assert!(!looks_special(t), "{t}");
        }
    }
}
