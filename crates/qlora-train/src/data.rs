//! Training data: JSONL or JSON files in the forms people use, tokenized into samples whose
//! labels mask everything but the response.
//!
//! - chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`,
//!   rendered with the model's chat template; loss on the assistant turns only;
//! - alpaca: `{"instruction", "input" (optional), "output"}`, rendered as a user turn
//!   (instruction, then the input after a blank line) and an assistant turn; loss on the output;
//! - text: `{"text": "..."}` per line, or a `.txt` file cut into windows of `max_len` tokens;
//!   loss on every token.

use std::path::Path;

use qlora_nn::IGNORE_INDEX;
use qlora_tokenizer::{ChatMessage, Tokenizer};
use serde_json::Value;

use crate::TrainError;

/// The form of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// Decided per record from its keys (`messages`, `instruction`, `text`); `.txt` files are
    /// text.
    Auto,
    /// Chat messages.
    Chat,
    /// Instruction / input / output.
    Alpaca,
    /// Plain text.
    Text,
}

impl std::str::FromStr for DataFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => DataFormat::Auto,
            "chat" => DataFormat::Chat,
            "alpaca" => DataFormat::Alpaca,
            "text" => DataFormat::Text,
            _ => return Err(format!("unknown format `{s}` (auto, chat, alpaca, text)")),
        })
    }
}

/// What to do with a sample longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// An error naming the file and line.
    Error,
    /// Keep the first `max_len` tokens.
    Truncate,
}

/// How to read a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// The file's form.
    pub format: DataFormat,
    /// Longest sample, in tokens.
    pub max_len: usize,
    /// Samples longer than `max_len`.
    pub overflow: Overflow,
    /// Skip malformed records (counting them) instead of failing on the first.
    pub skip_invalid: bool,
}

/// One tokenized training sample: `labels[i]` is `input_ids[i]` where the loss counts and
/// [`IGNORE_INDEX`] elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels, same length.
    pub labels: Vec<i64>,
}

impl Sample {
    /// Tokens the loss counts (excluding the first position, which predicts nothing).
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// What loading found besides the samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Records read.
    pub records: usize,
    /// Malformed records skipped (with `skip_invalid`).
    pub skipped: usize,
    /// Samples cut to `max_len`.
    pub truncated: usize,
}

/// Tokenizes text pieces, each trained on or not, into one sample.
fn tokenize(
    tok: &Tokenizer,
    pieces: &[(String, bool)],
) -> Result<Sample, qlora_tokenizer::TokenizerError> {
    let mut s = Sample {
        input_ids: Vec::new(),
        labels: Vec::new(),
    };
    for (i, (text, trained)) in pieces.iter().enumerate() {
        let ids = tok.encode(text, i == 0)?;
        s.labels.extend(
            ids.iter()
                .map(|&t| if *trained { t as i64 } else { IGNORE_INDEX }),
        );
        s.input_ids.extend(ids);
    }
    Ok(s)
}

fn string_field<'a>(v: &'a Value, key: &str, required: bool) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) if required && s.trim().is_empty() => {
            Err(format!("field `{key}` is empty"))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("field `{key}` is not a string: {other}")),
    }
}

/// The chat messages of a record.
fn messages(v: &Value) -> Result<Vec<ChatMessage>, String> {
    let list = v
        .get("messages")
        .ok_or("missing field `messages`")?
        .as_array()
        .ok_or("field `messages` is not a list")?;
    if list.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = string_field(m, "role", true).map_err(|e| format!("message {}: {e}", i + 1))?;
        let content =
            string_field(m, "content", true).map_err(|e| format!("message {}: {e}", i + 1))?;
        let (role, content) = (role.expect("required"), content.expect("required"));
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "message {}: role `{role}` is not system, user or assistant",
                i + 1
            ));
        }
        out.push(ChatMessage::new(role, content));
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to train on".into());
    }
    Ok(out)
}

/// Pieces of a conversation: everything up to each assistant reply (not trained), the reply
/// with its end-of-turn marker (trained).
fn chat_pieces(tok: &Tokenizer, msgs: &[ChatMessage]) -> Result<Vec<(String, bool)>, String> {
    let render = |m: &[ChatMessage], gen_prompt| {
        tok.apply_chat_template(m, gen_prompt)
            .map_err(|e| e.to_string())
    };
    let mut pieces = Vec::new();
    let mut done = String::new();
    for (k, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prefix = render(&msgs[..k], true)?;
        let full = render(&msgs[..=k], false)?;
        let (Some(context), Some(reply)) = (
            prefix.strip_prefix(done.as_str()),
            full.strip_prefix(prefix.as_str()),
        ) else {
            return Err("the chat template does not render conversations as growing prefixes, so replies cannot be told from prompts".into());
        };
        pieces.push((context.to_string(), false));
        pieces.push((reply.to_string(), true));
        done = full;
    }
    Ok(pieces)
}

/// The pieces of one JSON record.
fn record_pieces(
    tok: &Tokenizer,
    v: &Value,
    format: DataFormat,
) -> Result<Vec<(String, bool)>, String> {
    if !v.is_object() {
        return Err(format!("expected a JSON object, found {v}"));
    }
    let format = match format {
        DataFormat::Auto if v.get("messages").is_some() => DataFormat::Chat,
        DataFormat::Auto if v.get("instruction").is_some() => DataFormat::Alpaca,
        DataFormat::Auto if v.get("text").is_some() => DataFormat::Text,
        DataFormat::Auto => {
            return Err("no `messages`, `instruction` or `text` field: not a known format".into());
        }
        f => f,
    };
    match format {
        DataFormat::Chat => chat_pieces(tok, &messages(v)?),
        DataFormat::Alpaca => {
            let instruction = string_field(v, "instruction", true)?.expect("required");
            let input = string_field(v, "input", false)?.filter(|s| !s.trim().is_empty());
            let output = string_field(v, "output", true)?.expect("required");
            let user = match input {
                Some(i) => format!("{instruction}\n\n{i}"),
                None => instruction.to_string(),
            };
            chat_pieces(
                tok,
                &[
                    ChatMessage::new("user", &user),
                    ChatMessage::new("assistant", output),
                ],
            )
        }
        DataFormat::Text => Ok(vec![(
            string_field(v, "text", true)?
                .expect("required")
                .to_string(),
            true,
        )]),
        DataFormat::Auto => unreachable!("resolved above"),
    }
}

/// Reads and tokenizes a data file (`.jsonl`, `.json` array, or `.txt`).
pub fn load_dataset(
    path: impl AsRef<Path>,
    tok: &Tokenizer,
    opts: &DataOptions,
) -> Result<(Vec<Sample>, LoadReport), TrainError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    if opts.max_len < 2 {
        return Err(TrainError::Setting {
            name: "seq-len".into(),
            problem: format!("{} is too short (at least 2 tokens)", opts.max_len),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    // A UTF-8 byte-order mark (as editors on Windows write them) is not part of the text.
    let bytes = match bytes.strip_prefix("\u{feff}".as_bytes()) {
        Some(rest) => rest.to_vec(),
        None => bytes,
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        TrainError::Data {
            path: path.display().to_string(),
            line: 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count(),
            problem: format!("not valid UTF-8 (byte {at} of the file)"),
        }
    })?;
    let mut report = LoadReport::default();
    let mut samples = Vec::new();
    let is_txt = path.extension().is_some_and(|e| e == "txt");
    if is_txt || (opts.format == DataFormat::Text && !text.trim_start().starts_with('{')) {
        let ids = tok.encode(&text, true)?;
        for w in ids.chunks(opts.max_len) {
            if w.len() >= 2 {
                samples.push(Sample {
                    input_ids: w.to_vec(),
                    labels: w.iter().map(|&t| t as i64).collect(),
                });
            }
        }
        report.records = 1;
    } else {
        let records: Vec<(usize, Result<Value, String>)> = if text.trim_start().starts_with('[') {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(a)) => a
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i + 1, Ok(v)))
                    .collect(),
                Ok(_) => unreachable!("starts with ["),
                Err(e) => {
                    return Err(TrainError::Data {
                        path: name,
                        line: e.line(),
                        problem: format!("not valid JSON: {e}"),
                    });
                }
            }
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    (
                        i + 1,
                        serde_json::from_str::<Value>(l)
                            .map_err(|e| format!("not valid JSON: {e}")),
                    )
                })
                .collect()
        };
        for (line, v) in records {
            report.records += 1;
            let result = v.and_then(|v| {
                let pieces = record_pieces(tok, &v, opts.format)?;
                let mut s = tokenize(tok, &pieces).map_err(|e| e.to_string())?;
                if s.input_ids.len() > opts.max_len {
                    match opts.overflow {
                        Overflow::Error => {
                            return Err(format!(
                                "{} tokens exceed the maximum length {} (raise --seq-len or allow truncation)",
                                s.input_ids.len(),
                                opts.max_len
                            ));
                        }
                        Overflow::Truncate => {
                            s.input_ids.truncate(opts.max_len);
                            s.labels.truncate(opts.max_len);
                            report.truncated += 1;
                        }
                    }
                }
                if s.trained_tokens() == 0 {
                    return Err("no response token left to train on".into());
                }
                Ok(s)
            });
            match result {
                Ok(s) => samples.push(s),
                Err(_) if opts.skip_invalid => report.skipped += 1,
                Err(problem) => {
                    return Err(TrainError::Data {
                        path: name,
                        line,
                        problem,
                    });
                }
            }
        }
    }
    if samples.is_empty() {
        return Err(TrainError::Dataset {
            path: name,
            problem: format!(
                "no usable sample ({} records, {} skipped)",
                report.records, report.skipped
            ),
        });
    }
    Ok((samples, report))
}

/// Greedy packing: consecutive samples joined into sequences of at most `max_len` tokens
/// (attention is not masked between the joined samples, as in the usual packing).
pub fn pack(samples: Vec<Sample>, max_len: usize) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for s in samples {
        match out.last_mut() {
            Some(last) if last.input_ids.len() + s.input_ids.len() <= max_len => {
                last.input_ids.extend(s.input_ids);
                last.labels.extend(s.labels);
            }
            _ => out.push(s),
        }
    }
    out
}
