//! The record forms: which one a JSON record is (`auto` tells them apart by their keys), and its
//! sample.
//!
//! - chat: `messages` of `role`/`content`, and an optional `system` field put first as a system
//!   message;
//! - ShareGPT (axolotl's and LLaMA-Factory's `sharegpt`): `conversations` of `from`/`value`,
//!   `human` → user, `gpt` → assistant, `system` (also `user`/`assistant`), and an optional
//!   `system` field, then as chat (TRL's `maybe_convert_to_chatml` renames the keys the same way);
//! - TRL's prompt/completion: `prompt` and `completion`, both strings or both lists of messages,
//!   tokenized as TRL's `SFTTrainer` does: the prompt alone (with the generation prompt when
//!   conversational) and prompt + completion (the eos token appended to a string completion);
//!   the completion is what follows their common prefix, and only it trains
//!   (`completion_only_loss`); conversational replies train where chat's would too;
//! - alpaca (`instruction`, `input`, `output`) as a user turn and a reply, and text.
//!
//! For message lists the trained tokens of a completion are its replies' (the tokens TRL's
//! completion and assistant masks both keep, as `SFTTrainer` with `assistant_only_loss=True`
//! trains them, which is how chat trains here too). `DataOptions::columns` renames the file's
//! top-level fields first (not `role`/`content` or `from`/`value`); `train_on_inputs` trains
//! every token.

use qlora_nn::IGNORE_INDEX;
use qlora_tokenizer::{ChatMessage, Tokenizer};
use serde_json::{Map, Value};

use super::tokenize::{chat_sample, text_sample, with_eos};
use super::{DataFormat, DataOptions, Sample};

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

/// The roles of a form: its names for them as chat's, and how an error lists them.
struct Roles {
    map: fn(&str) -> Option<&'static str>,
    known: &'static str,
}

const CHAT_ROLES: Roles = Roles {
    map: chat_role,
    known: "system, user or assistant",
};

const SHAREGPT_ROLES: Roles = Roles {
    map: sharegpt_role,
    known: "human, gpt or system (or user, assistant)",
};

/// The messages of list field `key`, each with its role and content under `role_key` and
/// `content_key`, roles renamed by `roles`.
fn message_list(
    v: &Value,
    key: &str,
    (role_key, content_key): (&str, &str),
    roles: &Roles,
) -> Result<Vec<ChatMessage>, String> {
    let list = v
        .get(key)
        .ok_or_else(|| format!("missing field `{key}`"))?
        .as_array()
        .ok_or_else(|| format!("field `{key}` is not a list"))?;
    if list.is_empty() {
        return Err(format!("`{key}` is empty"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |e: String| match key {
            "messages" => format!("message {}: {e}", i + 1),
            _ => format!("`{key}` message {}: {e}", i + 1),
        };
        let name = string_field(m, role_key, true)
            .map_err(at)?
            .expect("required");
        let Some(r) = (roles.map)(name) else {
            return Err(at(format!("role `{name}` is not {}", roles.known)));
        };
        // An empty system turn (common in ShareGPT dumps) is no system prompt, as LLaMA-Factory
        // and axolotl read it.
        if r == "system"
            && string_field(m, content_key, false)
                .map_err(at)?
                .is_none_or(|c| c.trim().is_empty())
        {
            continue;
        }
        let content = string_field(m, content_key, true)
            .map_err(at)?
            .expect("required");
        out.push(ChatMessage::new(r, content));
    }
    Ok(out)
}

/// Chat roles as they are.
fn chat_role(r: &str) -> Option<&'static str> {
    match r {
        "system" => Some("system"),
        "user" => Some("user"),
        "assistant" => Some("assistant"),
        _ => None,
    }
}

/// ShareGPT's roles as chat's.
fn sharegpt_role(r: &str) -> Option<&'static str> {
    match r {
        "system" => Some("system"),
        "human" | "user" => Some("user"),
        "gpt" | "assistant" => Some("assistant"),
        _ => None,
    }
}

/// `msgs` with the record's `system` field first, where it has a non-empty one. Where the
/// messages open with their own system turn too, the record says two things: refused. Also
/// whether the field was put first.
fn with_system(v: &Value, mut msgs: Vec<ChatMessage>) -> Result<(Vec<ChatMessage>, bool), String> {
    if let Some(system) = string_field(v, "system", false)?.filter(|s| !s.trim().is_empty()) {
        if msgs.first().is_some_and(|m| m.role == "system") {
            return Err("both a `system` field and a system message".into());
        }
        msgs.insert(0, ChatMessage::new("system", system));
        return Ok((msgs, true));
    }
    Ok((msgs, false))
}

/// A conversation to train on: it has a reply.
fn conversation(msgs: Vec<ChatMessage>) -> Result<Vec<ChatMessage>, String> {
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to train on".into());
    }
    Ok(msgs)
}

/// The fields the forms read, which `--columns` may map onto.
pub const FORM_FIELDS: [&str; 9] = [
    "messages",
    "conversations",
    "system",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "text",
];

/// `record` with its fields renamed by `columns` (`(ours, theirs)`): a field named `theirs`
/// becomes `ours`. A record that has both is refused (which one is meant?).
fn renamed(record: Value, columns: &[(String, String)]) -> Result<Value, String> {
    if columns.is_empty() {
        return Ok(record);
    }
    let Value::Object(mut fields) = record else {
        return Ok(record);
    };
    let mut out = Map::new();
    for (ours, theirs) in columns {
        if let Some(v) = fields.remove(theirs) {
            if ours != theirs && fields.contains_key(ours) {
                return Err(format!(
                    "both `{theirs}` (read as `{ours}` by --columns) and `{ours}`"
                ));
            }
            out.insert(ours.clone(), v);
        }
    }
    for (k, v) in fields {
        if !out.contains_key(&k) {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

/// The form of a record under `format` (`auto`: by its keys).
fn form_of(v: &Value, format: DataFormat) -> Result<DataFormat, String> {
    if format != DataFormat::Auto {
        return Ok(format);
    }
    let has = |k: &str| v.get(k).is_some();
    Ok(if has("messages") {
        DataFormat::Chat
    } else if has("conversations") {
        DataFormat::ShareGpt
    } else if has("prompt") && has("completion") {
        DataFormat::PromptCompletion
    } else if has("instruction") {
        DataFormat::Alpaca
    } else if has("text") {
        DataFormat::Text
    } else {
        return Err(
            "no `messages`, `conversations`, `prompt` + `completion`, `instruction` or `text` \
             field: not a known form (--columns maps other field names)"
                .into(),
        );
    })
}

/// Every token of `s` trained.
fn all_trained(mut s: Sample) -> Sample {
    s.labels = s.input_ids.iter().map(|&t| t as i64).collect();
    s
}

/// The sample of one JSON record, and the form it was read as.
pub(super) fn record_sample(
    tok: &Tokenizer,
    v: Value,
    opts: &DataOptions,
) -> Result<(Sample, DataFormat), String> {
    if !v.is_object() {
        return Err(format!("expected a JSON object, found {v}"));
    }
    let v = renamed(v, &opts.columns)?;
    let form = form_of(&v, opts.format)?;
    // `(messages, whether a system field was put first)`: an error that numbers the messages
    // then says that the field is message 1.
    let chat = |(msgs, system_field): (Vec<ChatMessage>, bool)| -> Result<Sample, String> {
        let s = chat_sample(tok, &conversation(msgs)?).map_err(|e| {
            if system_field && e.contains("message ") {
                format!("{e} (the `system` field counted as message 1)")
            } else {
                e
            }
        })?;
        Ok(if opts.train_on_inputs {
            all_trained(s)
        } else {
            s
        })
    };
    let sample = match form {
        DataFormat::Chat => chat(with_system(
            &v,
            message_list(&v, "messages", ("role", "content"), &CHAT_ROLES)?,
        )?)?,
        DataFormat::ShareGpt => chat(with_system(
            &v,
            message_list(&v, "conversations", ("from", "value"), &SHAREGPT_ROLES)?,
        )?)?,
        DataFormat::PromptCompletion => prompt_completion(tok, &v, opts.train_on_inputs)?,
        DataFormat::Alpaca => {
            let instruction = string_field(&v, "instruction", true)?.expect("required");
            let input = string_field(&v, "input", false)?.filter(|s| !s.trim().is_empty());
            let output = string_field(&v, "output", true)?.expect("required");
            let user = match input {
                Some(i) => format!("{instruction}\n\n{i}"),
                None => instruction.to_string(),
            };
            chat((
                vec![
                    ChatMessage::new("user", &user),
                    ChatMessage::new("assistant", output),
                ],
                false,
            ))?
        }
        DataFormat::Text => text_sample(tok, string_field(&v, "text", true)?.expect("required"))
            .map_err(|e| e.to_string())?,
        DataFormat::Auto => unreachable!("resolved by form_of"),
    };
    Ok((sample, form))
}

/// TRL's prompt/completion sample (see the module docs).
fn prompt_completion(tok: &Tokenizer, v: &Value, train_on_inputs: bool) -> Result<Sample, String> {
    let (prompt_ids, mut sample) = match (v.get("prompt"), v.get("completion")) {
        (Some(Value::String(p)), Some(Value::String(c))) => {
            if c.trim().is_empty() {
                return Err("field `completion` is empty".into());
            }
            let prompt_ids = tok.encode(p, true).map_err(|e| e.to_string())?;
            let full = tok
                .encode(&with_eos(tok, &format!("{p}{c}")), true)
                .map_err(|e| e.to_string())?;
            let labels = full.iter().map(|&t| t as i64).collect();
            (prompt_ids, Sample::new(full, labels))
        }
        (Some(Value::Array(_)), Some(Value::Array(_))) => {
            let prompt = message_list(v, "prompt", ("role", "content"), &CHAT_ROLES)?;
            let completion = message_list(v, "completion", ("role", "content"), &CHAT_ROLES)?;
            if !completion.iter().any(|m| m.role == "assistant") {
                return Err("`completion` has no assistant message to train on".into());
            }
            let rendered = tok
                .apply_chat_template(&prompt, true)
                .map_err(|e| e.to_string())?;
            let prompt_ids = tok.encode(&rendered, false).map_err(|e| e.to_string())?;
            let whole: Vec<ChatMessage> = prompt.into_iter().chain(completion).collect();
            (prompt_ids, chat_sample(tok, &conversation(whole)?)?)
        }
        (None, _) => return Err("missing field `prompt`".into()),
        (_, None) => return Err("missing field `completion`".into()),
        _ => {
            return Err(
                "`prompt` and `completion` must both be strings or both lists of messages".into(),
            );
        }
    };
    if train_on_inputs {
        return Ok(all_trained(sample));
    }
    // The completion starts where the prompt alone and prompt + completion part.
    let prompt_len = prompt_ids
        .iter()
        .zip(&sample.input_ids)
        .take_while(|(a, b)| a == b)
        .count();
    for l in &mut sample.labels[..prompt_len] {
        *l = IGNORE_INDEX;
    }
    Ok(sample)
}
