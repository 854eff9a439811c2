//! Training data: JSONL or JSON files in the forms people use, tokenized into samples whose
//! labels mask everything but the response.
//!
//! - chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`,
//!   rendered with the model's chat template and tokenized whole without added special tokens,
//!   as transformers' `apply_chat_template(tokenize=True)` and TRL do (the template writes its
//!   own bos); loss on the assistant turns only (TRL's `assistant_only_loss`): the template's
//!   `{% generation %}` blocks where it has them, exactly as TRL masks them; otherwise each
//!   reply's text through its end-of-turn marker (what follows the reply both where the
//!   conversation goes on and where it ends, such as `<|im_end|>\n` or `<|eot_id|>`), found
//!   in the rendered text, so templates that render earlier turns differently (Qwen3's
//!   reasoning) train as they render;
//! - alpaca: `{"instruction", "input" (optional), "output"}`, rendered as a user turn
//!   (instruction, then the input after a blank line) and an assistant turn; loss on the output;
//! - text: `{"text": "..."}` per line, or a `.txt` file cut into windows of `max_len` tokens;
//!   as TRL does, the eos token is appended and the text is tokenized with the special tokens
//!   transformers' `tokenizer(text)` adds (Llama 3's bos); loss on every token.

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
    /// For a sample [`pack`] made of several, their lengths in order (they sum to the
    /// length); empty for one sample.
    pub seq_lengths: Vec<usize>,
}

impl Sample {
    /// One sample of `input_ids` and their `labels`.
    pub fn new(input_ids: Vec<u32>, labels: Vec<i64>) -> Self {
        Self {
            input_ids,
            labels,
            seq_lengths: Vec::new(),
        }
    }

    /// The samples this one holds, each `(ids, labels)`: itself, or those [`pack`] joined.
    pub fn sequences(&self) -> Vec<(&[u32], &[i64])> {
        if self.seq_lengths.is_empty() {
            return vec![(&self.input_ids, &self.labels)];
        }
        let mut at = 0;
        self.seq_lengths
            .iter()
            .map(|&n| {
                let s = (&self.input_ids[at..at + n], &self.labels[at..at + n]);
                at += n;
                s
            })
            .collect()
    }

    /// Tokens the loss counts (excluding the first position of each sample it holds, which
    /// predicts nothing).
    pub fn trained_tokens(&self) -> usize {
        self.sequences()
            .iter()
            .map(|(_, labels)| {
                labels
                    .iter()
                    .skip(1)
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum()
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

/// `text` with the eos token appended (unless it already ends with it), as TRL prepares
/// language-modelling text.
fn with_eos(tok: &Tokenizer, text: &str) -> String {
    match tok.eos_token.as_deref() {
        Some(eos) if !text.ends_with(eos) => format!("{text}{eos}"),
        _ => text.to_string(),
    }
}

/// A text sample: TRL's eos appended, the tokenizer's special tokens added, every token
/// trained.
fn text_sample(tok: &Tokenizer, text: &str) -> Result<Sample, qlora_tokenizer::TokenizerError> {
    let ids = tok.encode(&with_eos(tok, text), true)?;
    Ok(Sample::new(
        ids.clone(),
        ids.iter().map(|&t| t as i64).collect(),
    ))
}

/// The index of the token holding byte `pos` (transformers' `char_to_token`).
fn token_at(offsets: &[(usize, usize)], pos: usize) -> Option<usize> {
    offsets.iter().position(|&(s, e)| s <= pos && pos < e)
}

/// Which tokens `spans` (byte ranges of the text) cover, as transformers'
/// `return_assistant_tokens_mask` computes them: from the token holding a span's first byte
/// to the one holding its last (to the end where no token holds it); a span whose first byte
/// no token holds ends the marking.
fn span_mask(offsets: &[(usize, usize)], spans: &[std::ops::Range<usize>]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    for span in spans {
        let Some(first) = token_at(offsets, span.start) else {
            break;
        };
        let last = token_at(offsets, span.end - 1).unwrap_or(offsets.len() - 1);
        for m in &mut mask[first..=last.max(first)] {
            *m = true;
        }
    }
    mask
}

/// A conversation's sample: the rendered chat tokenized whole (no added special tokens), the
/// replies' tokens trained (see the module docs).
fn chat_sample(tok: &Tokenizer, msgs: &[ChatMessage]) -> Result<Sample, String> {
    let rendered = tok
        .apply_chat_template_spans(msgs, false)
        .map_err(|e| e.to_string())?;
    let spans = if tok.chat_template.has_generation_blocks() {
        rendered.generation.clone()
    } else {
        reply_spans(tok, msgs, &rendered.text)?
    };
    if spans.is_empty() {
        return Err("the chat template marks no assistant text to train on".into());
    }
    let text = &rendered.text;
    let (ids, offsets) = tok
        .encode_with_offsets(text, false)
        .map_err(|e| e.to_string())?;
    let labels = span_mask(&offsets, &spans)
        .iter()
        .zip(&ids)
        .map(|(&m, &t)| if m { t as i64 } else { IGNORE_INDEX })
        .collect();
    Ok(Sample::new(ids, labels))
}

/// The byte length of the longest common prefix of `a` and `b`, at a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// The byte length of the longest run of whole tokens that `a` and `b` start with (two turn
/// ends such as `<|end|>\n<|user|>` and `<|end|>\n<|endoftext|>` share the text `<|end|>\n<|`
/// but the tokens `<|end|>\n`); by characters where either does not encode.
fn common_tokens(tok: &Tokenizer, a: &str, b: &str) -> usize {
    let chars = common_prefix(a, b);
    match (
        tok.encode_with_offsets(a, false),
        tok.encode_with_offsets(b, false),
    ) {
        (Ok((ia, oa)), Ok((ib, _))) => {
            let n = ia.iter().zip(&ib).take_while(|(x, y)| x == y).count();
            if n == 0 { 0 } else { oa[n - 1].1.min(chars) }
        }
        _ => chars,
    }
}

/// The byte ranges of `text` (the whole conversation rendered) that each assistant turn's
/// generated part occupies: what the model writes after the prompt that asks for it (the
/// messages before it rendered with the generation prompt, where `text` starts with that
/// prompt; else the reply itself), through the reply and its end-of-turn marker. The reply is
/// found (as written, or trimmed as templates print it) after the previous one and after that
/// prompt; its end-of-turn is what follows it both in `text` and in the conversation rendered
/// up to that reply alone. So Qwen3's empty `<think></think>` before a reply is trained, as
/// TRL's training template trains it.
fn reply_spans(
    tok: &Tokenizer,
    msgs: &[ChatMessage],
    text: &str,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    let mut spans = Vec::new();
    let mut cursor = 0;
    for (k, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = tok.apply_chat_template(&msgs[..k], true).ok();
        let from = match &prompt {
            Some(p) => cursor.max(common_prefix(text, p)),
            None => cursor,
        };
        // Where the prompt that asks for this turn is a prefix of the text, the turn starts
        // where it ends.
        let prompt_end = prompt
            .filter(|p| text.starts_with(p.as_str()) && p.len() >= cursor)
            .map(|p| p.len());
        let found = [m.content.as_str(), m.content.trim()]
            .into_iter()
            .filter(|c| !c.is_empty())
            .find_map(|c| text[from..].find(c).map(|at| (from + at, c)));
        let Some((start, content)) = found else {
            return Err(format!(
                "the chat template does not print the assistant reply of message {} as written, \
                 so it cannot be told from the prompt (give the template {{% generation %}} blocks)",
                k + 1
            ));
        };
        let end = start + content.len();
        let alone = tok
            .apply_chat_template(&msgs[..=k], false)
            .map_err(|e| e.to_string())?;
        let tail = alone
            .rfind(content)
            .map_or("", |at| &alone[at + content.len()..]);
        let end_of_turn = common_tokens(tok, &text[end..], tail);
        let start = prompt_end.filter(|&p| p <= start).unwrap_or(start);
        spans.push(start..end + end_of_turn);
        cursor = end + end_of_turn;
    }
    Ok(spans)
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

/// The sample of one JSON record.
fn record_sample(tok: &Tokenizer, v: &Value, format: DataFormat) -> Result<Sample, String> {
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
        DataFormat::Chat => chat_sample(tok, &messages(v)?),
        DataFormat::Alpaca => {
            let instruction = string_field(v, "instruction", true)?.expect("required");
            let input = string_field(v, "input", false)?.filter(|s| !s.trim().is_empty());
            let output = string_field(v, "output", true)?.expect("required");
            let user = match input {
                Some(i) => format!("{instruction}\n\n{i}"),
                None => instruction.to_string(),
            };
            chat_sample(
                tok,
                &[
                    ChatMessage::new("user", &user),
                    ChatMessage::new("assistant", output),
                ],
            )
        }
        DataFormat::Text => text_sample(tok, string_field(v, "text", true)?.expect("required"))
            .map_err(|e| e.to_string()),
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
        let ids = tok.encode(&with_eos(tok, &text), true)?;
        for w in ids.chunks(opts.max_len) {
            if w.len() >= 2 {
                samples.push(Sample::new(
                    w.to_vec(),
                    w.iter().map(|&t| t as i64).collect(),
                ));
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
                let mut s = record_sample(tok, &v, opts.format)?;
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

/// Best-Fit-Decreasing packing (TRL's `packing_strategy="bfd"`): samples, longest first, each
/// into the bin of `max_len` tokens it fills best (the fullest one it fits in), a new bin when
/// none has room. Each bin is one [`Sample`] that keeps its samples' lengths
/// ([`Sample::seq_lengths`]), so that padding-free batches keep them apart (positions restart,
/// attention stays inside each, the first token of each is not predicted from the one before):
/// the same loss per sample as unpacked, in fewer, fuller rows. Bins are in the order they
/// were opened; a sample longer than `max_len` is a bin of its own.
pub fn pack(samples: Vec<Sample>, max_len: usize) -> Vec<Sample> {
    let mut order: Vec<Sample> = samples
        .into_iter()
        .flat_map(|s| {
            s.sequences()
                .into_iter()
                .map(|(i, l)| Sample::new(i.to_vec(), l.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Stable: equal lengths keep their order, so packing is deterministic.
    order.sort_by_key(|s| std::cmp::Reverse(s.input_ids.len()));
    let mut bins: Vec<Sample> = Vec::new();
    // Free room → bins with that room, for the best fit in O(log n).
    let mut by_room: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for s in order {
        let n = s.input_ids.len();
        let best = by_room.range(n..).next().map(|(&room, _)| room);
        let bin = match best {
            Some(room) => {
                let list = by_room.get_mut(&room).expect("listed");
                let b = list.remove(0);
                if list.is_empty() {
                    by_room.remove(&room);
                }
                b
            }
            None => {
                bins.push(Sample {
                    input_ids: Vec::new(),
                    labels: Vec::new(),
                    seq_lengths: Vec::new(),
                });
                bins.len() - 1
            }
        };
        let b = &mut bins[bin];
        b.input_ids.extend(&s.input_ids);
        b.labels.extend(&s.labels);
        b.seq_lengths.push(n);
        let room = max_len.saturating_sub(b.input_ids.len());
        if room > 0 {
            by_room.entry(room).or_default().push(bin);
        }
    }
    for b in &mut bins {
        if b.seq_lengths.len() == 1 {
            b.seq_lengths.clear();
        }
    }
    bins
}
