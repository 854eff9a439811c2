//! [`SpmTokenizer`]: the SentencePiece BPE tokenizer of a GGUF file whose
//! `tokenizer.ggml.model` is `llama` (Llama 1/2, Mistral, Gemma, ...), as llama.cpp runs it.
//!
//! A GGUF SentencePiece vocabulary carries no merge list, only a score per token; llama.cpp's
//! `llm_tokenizer_spm` (and SentencePiece's own BPE encoder, Kudo & Richardson 2018) starts from
//! the UTF-8 characters of the text and repeatedly joins the adjacent pair whose concatenation is
//! the vocabulary token of highest score (ties: the leftmost pair). Pieces that end up outside the
//! vocabulary are spelled as byte tokens `<0xXX>` (byte fallback).
//!
//! Around that core, `llama_vocab::tokenize`: the text is first cut at the texts of control,
//! user-defined and unknown tokens (longest first), which become their ids; every text fragment
//! gets a leading space when the vocabulary asks for one (`tokenizer.ggml.add_space_prefix`, the
//! SentencePiece "dummy prefix"), and spaces become `▁` (U+2581).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GGUF token types (SentencePiece piece types).
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

/// A SentencePiece BPE vocabulary with llama.cpp's encoding and decoding rules.
#[derive(Debug, Clone)]
pub(crate) struct SpmTokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i64>,
    ids: HashMap<String, u32>,
    /// Ids of the `<0xXX>` byte tokens, by byte.
    bytes: [Option<u32>; 256],
    /// Control, user-defined and unknown tokens, longest text first: matched whole in text.
    specials: Vec<u32>,
    add_space_prefix: bool,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, PartialEq)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; at equal scores the leftmost pair (llama.cpp's `llm_bigram_spm`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One symbol of the text being merged: `text[start..start + len]`, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmTokenizer {
    /// The vocabulary `tokens` with their `scores` and GGUF `types`; `add_space_prefix` as
    /// `tokenizer.ggml.add_space_prefix`. Errors name the problem (the caller adds the file).
    pub(crate) fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i64>,
        add_space_prefix: bool,
    ) -> Result<Self, String> {
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err(format!(
                "{} tokens, {} scores and {} token types: one of each per token",
                tokens.len(),
                scores.len(),
                types.len()
            ));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut bytes = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| "more than 2^32 tokens".to_string())?;
            if ids.insert(t.clone(), id).is_some() {
                return Err(format!("token `{t}` appears twice in the vocabulary"));
            }
            if types[i] == BYTE {
                let b = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("byte token {i} is `{t}`, not `<0xXX>`"))?;
                bytes[b as usize] = Some(id);
            }
        }
        let mut specials: Vec<u32> = (0..tokens.len())
            .filter(|&i| {
                matches!(types[i], UNKNOWN | CONTROL | USER_DEFINED) && !tokens[i].is_empty()
            })
            .map(|i| i as u32)
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        Ok(Self {
            tokens,
            scores,
            types,
            ids,
            bytes,
            specials,
            add_space_prefix,
        })
    }

    /// The vocabulary as an HF `tokenizer.json` (no post-processor), as transformers'
    /// `LlamaConverter` writes a SentencePiece BPE model: a BPE with byte fallback whose merges
    /// are every split of a token into two tokens, ranked by the merged token's score (highest
    /// first; within one token by the ids of its halves), spaces as `▁` with a `▁` prepended to
    /// each text fragment where the vocabulary adds a space prefix (the normalizer runs per
    /// fragment between special tokens, as llama.cpp prefixes each), control, user-defined and
    /// unknown tokens as special added tokens.
    pub(crate) fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::json;
        let normal = |i: usize| !matches!(self.types[i], UNKNOWN | CONTROL | USER_DEFINED | BYTE);
        let mut vocab = serde_json::Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
        }
        let mut merges: Vec<(f32, &str, &str)> = Vec::new();
        let mut order: Vec<usize> = (0..self.tokens.len()).filter(|&i| normal(i)).collect();
        // Stable, as Python's `sorted`: ties keep vocabulary order.
        order.sort_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]));
        for i in order {
            let t = self.tokens[i].as_str();
            let mut local: Vec<(u32, u32, &str, &str)> = t
                .char_indices()
                .skip(1)
                .filter_map(|(k, _)| {
                    let (l, r) = t.split_at(k);
                    Some((self.token_id(l)?, self.token_id(r)?, l, r))
                })
                .collect();
            local.sort_by_key(|&(a, b, _, _)| (a, b));
            merges.extend(local.into_iter().map(|(_, _, l, r)| (self.scores[i], l, r)));
        }
        let merges: Vec<serde_json::Value> = merges.iter().map(|(_, l, r)| json!([l, r])).collect();
        let unk = (0..self.tokens.len())
            .find(|&i| self.types[i] == UNKNOWN)
            .map(|i| self.tokens[i].clone());
        let added: Vec<serde_json::Value> = self
            .specials
            .iter()
            .map(|&id| {
                json!({"id": id, "content": self.tokens[id as usize], "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false,
                    "special": self.types[id as usize] != USER_DEFINED})
            })
            .collect();
        let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let normalizer = if self.add_space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, space]})
        } else {
            space
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
        })
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The id of the token whose text is `text`.
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The text of token `id`.
    pub(crate) fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Token ids of `text` (no bos), with each token's byte range in `text`: special-token
    /// texts become their ids, the fragments between them are merged by score. The
    /// dummy-prefix `▁` has no range of its own (it belongs to its piece's); byte tokens
    /// spelling one piece share its range.
    #[allow(clippy::type_complexity)]
    pub(crate) fn encode_with_offsets(
        &self,
        text: &str,
    ) -> Result<(Vec<u32>, Vec<(usize, usize)>), String> {
        let (mut out, mut offsets) = (Vec::new(), Vec::new());
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Token(id, at) => {
                    out.push(id);
                    offsets.push((at, at + self.tokens[id as usize].len()));
                }
                Fragment::Text(t) => {
                    let base = t.as_ptr() as usize - text.as_ptr() as usize;
                    let mut s = String::with_capacity(t.len() + 3);
                    // `orig[i]`: where byte `i` of the escaped text comes from in `t`.
                    let mut orig = Vec::with_capacity(t.len() + 4);
                    // Every text fragment follows the start or a special token.
                    if self.add_space_prefix {
                        s.push('▁');
                        orig.extend([0; 3]);
                    }
                    for (at, c) in t.char_indices() {
                        let e = if c == ' ' { '▁' } else { c };
                        s.push(e);
                        orig.extend(std::iter::repeat_n(at, e.len_utf8()));
                    }
                    orig.push(t.len());
                    let mut spans = Vec::new();
                    self.merge(&s, &mut out, &mut spans)?;
                    offsets.extend(
                        spans
                            .into_iter()
                            .map(|(a, b)| (base + orig[a], base + orig[b])),
                    );
                }
            }
        }
        Ok((out, offsets))
    }

    /// Cuts `text` at special-token texts, longest token first (llama.cpp's
    /// `tokenizer_st_partition`).
    fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        // An empty text has no fragment (llama.cpp: `encode("")` is `[]`, not `[▁]`).
        let mut frags = Vec::from_iter((!text.is_empty()).then_some(Fragment::Text(text)));
        for &id in &self.specials {
            let tok = self.tokens[id as usize].as_str();
            if !text.contains(tok) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(t) if t.contains(tok) => {
                        for (k, part) in t.split(tok).enumerate() {
                            if k > 0 {
                                // The token ends where this part (a slice of `text`) starts.
                                let at = part.as_ptr() as usize - text.as_ptr() as usize;
                                next.push(Fragment::Token(id, at - tok.len()));
                            }
                            if !part.is_empty() {
                                next.push(Fragment::Text(part));
                            }
                        }
                    }
                    f => next.push(f),
                }
            }
            frags = next;
        }
        frags
    }

    /// The score-ordered merges of one escaped fragment, appended to `out`, with each token's
    /// byte range of `text` appended to `spans`.
    fn merge(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        spans: &mut Vec<(usize, usize)>,
    ) -> Result<(), String> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (k, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: k.checked_sub(1),
                next: Some(k + 1),
            });
        }
        let Some(last) = symbols.last_mut() else {
            return Ok(());
        };
        last.next = None;
        let mut queue = BinaryHeap::new();
        let bigram = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (l, r) = (left?, right?);
            let (a, b) = (symbols[l], symbols[r]);
            let id = self.token_id(&text[a.start..b.start + b.len])?;
            Some(Bigram {
                left: l,
                right: r,
                score: self.scores[id as usize],
                len: a.len + b.len,
            })
        };
        for i in 1..symbols.len() {
            queue.extend(bigram(&symbols, Some(i - 1), Some(i)));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Stale: one side was merged since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            queue.extend(bigram(&symbols, symbols[b.left].prev, Some(b.left)));
            queue.extend(bigram(&symbols, Some(b.left), symbols[b.left].next));
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.token_id(piece) {
                Some(id) => {
                    out.push(id);
                    spans.push((s.start, s.start + s.len));
                }
                None => {
                    for b in piece.bytes() {
                        out.push(self.bytes[b as usize].ok_or_else(|| {
                            format!(
                                "`{piece}` is not in the vocabulary and byte <0x{b:02X}> has no token"
                            )
                        })?);
                        spans.push((s.start, s.start + s.len));
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }

    /// The text of `ids`: `▁` back to spaces, byte tokens joined into UTF-8 (invalid sequences
    /// become U+FFFD), control and unknown tokens left out with `skip_special`, and the space
    /// prefix of the first piece removed (llama.cpp's `detokenize`, SentencePiece's `decode`).
    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        let mut bytes = Vec::new();
        let mut first = true;
        for &id in ids {
            let i = id as usize;
            let (text, ty) = match (self.tokens.get(i), self.types.get(i)) {
                (Some(t), Some(&ty)) => (t, ty),
                _ => {
                    return Err(format!(
                        "token id {id} is past the vocabulary ({} tokens)",
                        self.len()
                    ));
                }
            };
            match ty {
                UNKNOWN | CONTROL if skip_special => continue,
                UNKNOWN | CONTROL | USER_DEFINED => bytes.extend_from_slice(text.as_bytes()),
                BYTE => bytes.push(
                    self.bytes
                        .iter()
                        .position(|b| *b == Some(id))
                        .expect("byte tokens are indexed in new()") as u8,
                ),
                _ => {
                    let piece = text.replace('▁', " ");
                    let piece = match piece.strip_prefix(' ') {
                        Some(rest) if first && self.add_space_prefix => rest,
                        _ => &piece,
                    };
                    bytes.extend_from_slice(piece.as_bytes());
                }
            }
            first = false;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// A piece of the text being tokenized: a special token matched whole, or text to merge.
#[derive(Debug, Clone, Copy)]
enum Fragment<'a> {
    /// A special token's id and where its text starts in the whole text.
    Token(u32, usize),
    /// A slice of the whole text.
    Text(&'a str),
}
