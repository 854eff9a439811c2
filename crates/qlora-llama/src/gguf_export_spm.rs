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
//! The protobuf of `tokenizer.model` is read here (its `pieces` field: piece, score, type),
//! rather than through a protobuf crate: three fields of one message.

use std::path::Path;

use serde_json::Value;

use crate::LlamaError;
use crate::gguf::GgufValue;

/// SentencePiece's piece types (`ModelProto.SentencePiece.Type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The pieces of a `tokenizer.model`: text, score and type, by id.
fn read_pieces(path: &Path) -> Result<Vec<(String, f32, i32)>, LlamaError> {
    let bytes = std::fs::read(path).map_err(|e| LlamaError::io(path, e))?;
    let bad = |problem: &str| {
        LlamaError::format(
            path,
            format!("not a SentencePiece model (tokenizer.model): {problem}"),
        )
    };
    let mut pieces = Vec::new();
    let mut r = Reader { b: &bytes, at: 0 };
    while !r.done() {
        let (field, wire) = r.key().ok_or_else(|| bad("truncated field key"))?;
        if field == 1 && wire == 2 {
            let msg = r.bytes().ok_or_else(|| bad("truncated piece"))?;
            let (mut text, mut score, mut ty) = (None, 0f32, NORMAL);
            let mut p = Reader { b: msg, at: 0 };
            while !p.done() {
                let (f, w) = p.key().ok_or_else(|| bad("truncated piece field"))?;
                match (f, w) {
                    (1, 2) => {
                        let s = p.bytes().ok_or_else(|| bad("truncated piece text"))?;
                        text = Some(
                            String::from_utf8(s.to_vec())
                                .map_err(|_| bad("a piece is not UTF-8"))?,
                        );
                    }
                    (2, 5) => {
                        let s = p.fixed32().ok_or_else(|| bad("truncated score"))?;
                        score = f32::from_le_bytes(s);
                    }
                    (3, 0) => ty = p.varint().ok_or_else(|| bad("truncated type"))? as i32,
                    (_, w) => p.skip(w).ok_or_else(|| bad("truncated piece field"))?,
                }
            }
            pieces.push((text.ok_or_else(|| bad("a piece without text"))?, score, ty));
        } else {
            r.skip(wire).ok_or_else(|| bad("truncated field"))?;
        }
    }
    if pieces.is_empty() {
        return Err(bad("no pieces"));
    }
    Ok(pieces)
}

/// A protobuf wire-format reader over one message's bytes.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u64, u64)> {
        let k = self.varint()?;
        Some((k >> 3, k & 7))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    fn fixed32(&mut self) -> Option<[u8; 4]> {
        self.take(4)?.try_into().ok()
    }

    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => None,
        }
    }
}

/// A JSON file of the folder, `None` where it is absent.
fn json_file(dir: &Path, name: &str) -> Result<Option<Value>, LlamaError> {
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

/// gguf-py's `SpecialVocab` for the types llama.cpp models use: special token ids, whether bos
/// and eos are added, the chat template.
fn special_vocab(
    dir: &Path,
    config: Option<&Value>,
    tokenizer_json: Option<&Value>,
    added_tokens: &[Value],
    n_vocab: usize,
) -> Result<Vec<(String, GgufValue)>, LlamaError> {
    // (type, GGUF key): llama.cpp spells the separator's key "seperator".
    const TYPES: [(&str, &str); 7] = [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("sep", "seperator_token_id"),
        ("pad", "padding_token_id"),
        ("cls", "cls_token_id"),
        ("mask", "mask_token_id"),
    ];
    let content = |typ: &str| -> Option<String> {
        let e = config?.get(format!("{typ}_token"))?;
        e.as_str()
            .or_else(|| e.get("content").and_then(Value::as_str))
            .map(str::to_string)
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
    let (bos, eos) = (
        content("bos").or_else(|| content("cls")),
        content("eos").or_else(|| content("sep")),
    );
    if let Some(pp) = tokenizer_json.and_then(|t| t.get("post_processor")) {
        let list = pp["processors"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![pp.clone()]);
        for p in list {
            match p["type"].as_str() {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, false);
                    set_add(&mut add, "eos", false, false);
                }
                Some("TemplateProcessing") => {
                    let single = p["single"].as_array().cloned().unwrap_or_default();
                    if single.len() > 1 {
                        let id = |v: &Value| v["SpecialToken"]["id"].as_str().map(str::to_string);
                        if let Some(first) = id(&single[0]) {
                            let is_bos =
                                Some(&first) == bos.as_ref() || content("cls") == Some(first);
                            set_add(&mut add, "bos", is_bos, true);
                        }
                        if let Some(last) = id(&single[single.len() - 1]) {
                            set_add(&mut add, "eos", Some(last) == eos, true);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut meta = Vec::new();
    let mut ids: Vec<(&str, u32)> = Vec::new();
    for (typ, _) in TYPES {
        if let Some(v) = config
            .and_then(|c| c.get(format!("add_{typ}_token")))
            .and_then(Value::as_bool)
        {
            set_add(&mut add, typ, v, false);
        }
        let by_content = match typ {
            "bos" => bos.clone(),
            "eos" => eos.clone(),
            other => content(other),
        }
        .and_then(|c| {
            added_tokens
                .iter()
                .find(|a| a["content"].as_str() == Some(c.as_str()))
                .and_then(|a| a["id"].as_u64())
        });
        if let Some(id) = by_content.filter(|&id| (id as usize) < n_vocab) {
            ids.push((typ, id as u32));
        }
    }
    if let Some(model_config) = json_file(dir, "config.json")? {
        for (typ, _) in TYPES {
            let id = model_config[format!("{typ}_token_id")].as_u64();
            if let Some(id) = id.filter(|&id| (id as usize) < n_vocab)
                && !ids.iter().any(|(t, _)| *t == typ)
            {
                ids.push((typ, id as u32));
            }
        }
    }
    for (typ, key) in TYPES {
        if let Some((_, id)) = ids.iter().find(|(t, _)| *t == typ) {
            meta.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(*id)));
        }
    }
    for (typ, v) in add {
        // llama.cpp reads add_bos / add_eos; the converter's sep flag is a BERT one.
        if typ == "bos" || typ == "eos" {
            meta.push((
                format!("tokenizer.ggml.add_{typ}_token"),
                GgufValue::Bool(v),
            ));
        }
    }
    let template = match config.and_then(|c| c.get("chat_template")) {
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
                "chat_template is a list of named templates, which this writer does not write yet"
                    .to_string(),
            ));
        }
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), GgufValue::Str(t)));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_foreign_file_is_a_named_error() {
        let dir = std::env::temp_dir().join(format!("qlora-spm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.model");
        // A piece field whose length runs past the end.
        std::fs::write(&path, [0x0a, 0x40, 0x0a]).unwrap();
        let e = read_pieces(&path).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&path, b"{\"not\": \"protobuf\"}").unwrap();
        assert!(read_pieces(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
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
