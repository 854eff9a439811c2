//! Text and conversations into samples, with the labels TRL gives them.

use qlora_nn::IGNORE_INDEX;
use qlora_tokenizer::{ChatMessage, Tokenizer};

use super::Sample;

/// `text` with the eos token appended (unless it already ends with it), as TRL prepares
/// language-modelling text.
pub(super) fn with_eos(tok: &Tokenizer, text: &str) -> String {
    match tok.eos_token.as_deref() {
        Some(eos) if !text.ends_with(eos) => format!("{text}{eos}"),
        _ => text.to_string(),
    }
}

/// A text sample: TRL's eos appended, the tokenizer's special tokens added, every token
/// trained.
pub(super) fn text_sample(
    tok: &Tokenizer,
    text: &str,
) -> Result<Sample, qlora_tokenizer::TokenizerError> {
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
pub(super) fn chat_sample(tok: &Tokenizer, msgs: &[ChatMessage]) -> Result<Sample, String> {
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
