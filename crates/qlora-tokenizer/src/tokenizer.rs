//! [`Tokenizer`]: the model's tokenizer with its special tokens and chat template, read from
//! `tokenizer.json` (+ `tokenizer_config.json`, run by HF `tokenizers`, pure Rust) or built from a
//! GGUF file's vocabulary: byte-level BPE from its merges (`tokenizer.ggml.model = gpt2`), or
//! SentencePiece BPE from its scores (`llama`, see `spm`).

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer as HfTokenizer;
use tokenizers::processors::template::TemplateProcessing;

use crate::spm::SpmTokenizer;
use crate::{ChatTemplate, GgufVocab, TokenizerError};

/// A tokenizer with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Inner,
    /// Beginning-of-sequence token (as text), if the model has one.
    pub bos_token: Option<String>,
    /// End-of-sequence token (as text).
    pub eos_token: Option<String>,
    /// Padding token (as text), if the model names one.
    pub pad_token: Option<String>,
    /// Whether `encode(.., true)` prepends the bos token (where [`Tokenizer::post_processor`]
    /// is false).
    pub add_bos: bool,
    /// Whether `encode(.., true)` appends the eos token (where [`Tokenizer::post_processor`] is
    /// false).
    pub add_eos: bool,
    /// Whether `encode(.., true)` runs `tokenizer.json`'s own post-processor, as transformers 5
    /// does (a `tokenizer.json` folder), instead of `[bos] text [eos]` as `add_bos`/`add_eos`
    /// say (a GGUF vocabulary, as llama.cpp does).
    pub post_processor: bool,
    /// The chat template (unusable, with an error naming the file, where the model has none).
    pub chat_template: ChatTemplate,
    source: String,
}

/// llama.cpp's pre-tokenizer names → HF pre-tokenizer JSON.
fn pre_tokenizer(pre: &str) -> Option<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        }),
        // Llama 3's split with single digits (Qwen 2, 2.5 and 3).
        "qwen2" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        "llama-bpe" | "llama3" | "smaug-bpe" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}, "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        _ => return None,
    })
}

/// llama.cpp's name (`tokenizer.ggml.pre`) for a `tokenizer.json` pre-tokenizer, where it is one
/// of those a GGUF vocabulary is read with here (`gpt-2`, `smollm`, `llama-bpe`, `qwen2`): the inverse of
/// the mapping above, for writing a GGUF vocabulary. Fields the mapping does not set (offsets,
/// prefix schemes) are not compared.
pub fn gguf_pre_name(pre: &Value) -> Option<&'static str> {
    /// Whether every field of `ours` is in `theirs` with the same value (recursively).
    fn covers(ours: &Value, theirs: &Value) -> bool {
        match (ours, theirs) {
            (Value::Object(a), Value::Object(b)) => a
                .iter()
                .all(|(k, v)| b.get(k).is_some_and(|w| covers(v, w))),
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(v, w)| covers(v, w))
            }
            (a, b) => a == b,
        }
    }
    ["gpt-2", "smollm", "llama-bpe", "qwen2"]
        .into_iter()
        .find(|name| {
            let ours = pre_tokenizer(name).expect("a known name");
            covers(&ours, pre)
        })
}

/// A GGUF byte-level BPE vocabulary and merges as an HF `tokenizers` model.
fn gguf_bpe(vocab: &GgufVocab, types: &[i64]) -> Result<HfTokenizer, String> {
    let pre_name = vocab.pre.as_deref().unwrap_or("default");
    let pre = pre_tokenizer(pre_name)
        .ok_or_else(|| format!("pre-tokenizer `{pre_name}` is not supported"))?;
    let merges = vocab
        .merges
        .as_ref()
        .ok_or("`tokenizer.ggml.merges` is missing")?;
    let mut map = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, (t, ty)) in vocab.tokens.iter().zip(types).enumerate() {
        if map.insert(t.clone(), json!(i)).is_some() {
            return Err(format!("token `{t}` appears twice in the vocabulary"));
        }
        // 3 = control, 4 = user-defined: matched whole before BPE.
        if *ty == 3 || *ty == 4 {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == 3}),
            );
        }
    }
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null, "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": map, "merges": merges}
    });
    HfTokenizer::from_bytes(spec.to_string().as_bytes())
        .map_err(|e| format!("building BPE from vocabulary and merges: {e}"))
}

/// The algorithm behind a [`Tokenizer`].
#[derive(Debug, Clone)]
enum Inner {
    /// HF `tokenizers` (a `tokenizer.json`, or a GGUF byte-level BPE rebuilt as one).
    Hf(Box<HfTokenizer>),
    /// A GGUF SentencePiece vocabulary, run as llama.cpp runs it.
    Spm(Box<SpmTokenizer>),
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file stores (read into a [`GgufVocab`] by the file's reader):
    /// byte-level BPE from its merges (`model = "gpt2"`) or SentencePiece BPE from its scores
    /// (`"llama"`), with control tokens as special tokens, bos/eos and the chat template.
    /// Defaults follow llama.cpp where a key is absent (SentencePiece: bos 1, eos 2, bos added,
    /// space prefix).
    pub fn from_gguf_vocab(vocab: GgufVocab) -> Result<Self, TokenizerError> {
        let path = vocab.path.clone();
        let err = |problem: String| TokenizerError::Invalid {
            path: path.clone(),
            problem,
        };
        let tokens = &vocab.tokens;
        let types = vocab
            .token_types
            .clone()
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let spm = vocab.model == "llama";
        let inner = match vocab.model.as_str() {
            "gpt2" => Inner::Hf(Box::new(gguf_bpe(&vocab, &types).map_err(err)?)),
            "llama" => {
                // llama.cpp scores every token 0 when the file has none.
                let scores = vocab
                    .scores
                    .clone()
                    .unwrap_or_else(|| vec![0.0; tokens.len()]);
                Inner::Spm(Box::new(
                    SpmTokenizer::new(
                        tokens.clone(),
                        scores,
                        types,
                        vocab.add_space_prefix.unwrap_or(true),
                    )
                    .map_err(err)?,
                ))
            }
            other => {
                return Err(err(format!(
                    "tokenizer model `{other}` is not supported (byte-level BPE `gpt2` and \
                     SentencePiece `llama` are)"
                )));
            }
        };
        let tok_text = |id: Option<u64>, default: Option<u64>| {
            id.or(default).and_then(|i| tokens.get(i as usize).cloned())
        };
        Ok(Self {
            inner,
            bos_token: tok_text(vocab.bos_token_id, spm.then_some(1)),
            eos_token: tok_text(vocab.eos_token_id, spm.then_some(2)),
            pad_token: tok_text(vocab.padding_token_id, None),
            add_bos: vocab.add_bos_token.unwrap_or(spm),
            add_eos: false,
            post_processor: false,
            chat_template: ChatTemplate::new(vocab.chat_template.as_deref(), &path)?,
            source: path,
        })
    }

    /// Reads `tokenizer.json` in `dir`, with `tokenizer_config.json` (chat template, bos/eos/pad)
    /// and `chat_template.jinja` when present. The special tokens `encode(.., true)` adds are
    /// the `tokenizer.json` post-processor's, as in transformers 5.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let file = dir.join("tokenizer.json");
        let path = file.display().to_string();
        let bytes = std::fs::read(&file).map_err(|e| TokenizerError::io(&file, e))?;
        let inner = HfTokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Invalid {
            path: path.clone(),
            problem: format!("does not parse: {e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| TokenizerError::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
                path: cfg_path.display().to_string(),
                problem: format!("not valid JSON: {e}"),
            })?
        } else {
            Value::Null
        };
        // transformers: a `chat_template.jinja` file beside the config takes priority over the
        // config's `chat_template` (a string, or named templates of which `default` is used).
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            let t = std::fs::read_to_string(&jinja).map_err(|e| TokenizerError::io(&jinja, e))?;
            ChatTemplate::new(Some(&t), &jinja.display().to_string())?
        } else {
            ChatTemplate::from_hf_value(cfg.get("chat_template"), &cfg_path.display().to_string())?
        };
        let token = |k: &str| match cfg.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        // transformers 5 (measured on 5.25.0, every tokenizer class of the six families): the
        // special tokens `tokenizer(text)` adds are the `tokenizer.json` post-processor's alone
        // (Llama 3's and Mistral's add the bos, Qwen's nothing); `add_bos_token` /
        // `add_eos_token` in `tokenizer_config.json` change nothing, with a post-processor or
        // without one.
        Ok(Self {
            inner: Inner::Hf(Box::new(inner)),
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            pad_token: token("pad_token"),
            add_bos: false,
            add_eos: false,
            post_processor: true,
            chat_template,
            source: path,
        })
    }

    /// Token ids of `text`; special-token texts in it (`<|im_start|>`) become their ids. With
    /// `add_special_tokens`, the special tokens transformers' `tokenizer(text)` adds: the
    /// `tokenizer.json` post-processor's, or for a GGUF vocabulary bos as its
    /// `add_bos_token` says (see [`Tokenizer::post_processor`]); a rendered chat is encoded
    /// without them, as `apply_chat_template(tokenize=True)` does (its template writes its own).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.encode_with_offsets(text, add_special_tokens)?.0)
    }

    /// [`Tokenizer::encode`] with each token's byte range in `text` (empty for a token the
    /// post-processor added), as `return_offsets_mapping` gives them (in bytes).
    #[allow(clippy::type_complexity)]
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, Vec<(usize, usize)>), TokenizerError> {
        let err = |e: String| self.err(format!("encoding: {e}"));
        if let Inner::Hf(t) = &self.inner
            && add_special_tokens
            && self.post_processor
        {
            let enc = t.encode(text, true).map_err(|e| err(e.to_string()))?;
            return Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()));
        }
        let (mut ids, mut offsets) = (Vec::new(), Vec::new());
        if add_special_tokens
            && self.add_bos
            && let Some(b) = self.bos_id()
        {
            ids.push(b);
            offsets.push((0, 0));
        }
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t.encode(text, false).map_err(|e| err(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
                offsets.extend_from_slice(enc.get_offsets());
            }
            Inner::Spm(t) => {
                let (i, o) = t.encode_with_offsets(text).map_err(err)?;
                ids.extend(i);
                offsets.extend(o);
            }
        }
        if add_special_tokens
            && self.add_eos
            && let Some(e) = self.eos_id()
        {
            ids.push(e);
            offsets.push((text.len(), text.len()));
        }
        Ok((ids, offsets))
    }

    /// Writes the tokenizer as a HF folder transformers reads: `tokenizer.json` (with a
    /// post-processor that adds what [`Tokenizer::encode`] adds, since transformers 5 reads only
    /// that), `tokenizer_config.json` (bos/eos/pad) and `chat_template.jinja` where the model
    /// has a template. A GGUF SentencePiece vocabulary is written as transformers' converter
    /// writes one (a BPE whose merges come from the scores, with byte fallback).
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let dir = dir.as_ref();
        let mut spec: Value = match &self.inner {
            Inner::Hf(t) => serde_json::from_str(
                &t.to_string(false)
                    .map_err(|e| self.err(format!("serializing: {e}")))?,
            )
            .map_err(|e| self.err(format!("serializing: {e}")))?,
            Inner::Spm(t) => t.to_hf_json(),
        };
        if !self.post_processor {
            let special = |tok: &Option<String>, on: bool| {
                tok.as_ref()
                    .filter(|_| on)
                    .and_then(|s| self.token_id(s).map(|id| (s.clone(), id)))
            };
            let (bos, eos) = (
                special(&self.bos_token, self.add_bos),
                special(&self.eos_token, self.add_eos),
            );
            let specials: Vec<(String, u32)> = bos.iter().chain(&eos).cloned().collect();
            spec["post_processor"] = if specials.is_empty() {
                Value::Null
            } else {
                // `[bos] $A [eos]`, as transformers' `update_post_processor` writes it.
                let one = |seq: &str, type_id: u32| {
                    let mut parts: Vec<String> = Vec::new();
                    parts.extend(bos.iter().map(|(b, _)| format!("{b}:{type_id}")));
                    parts.push(format!("{seq}:{type_id}"));
                    parts.extend(eos.iter().map(|(e, _)| format!("{e}:{type_id}")));
                    parts.join(" ")
                };
                let bad = |e: String| self.err(format!("post-processor: {e}"));
                let template = TemplateProcessing::builder()
                    .try_single(one("$A", 0))
                    .map_err(bad)?
                    .try_pair(format!("{} {}", one("$A", 0), one("$B", 1)))
                    .map_err(bad)?
                    .special_tokens(specials)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                serde_json::to_value(template).map_err(|e| bad(e.to_string()))?
            };
        }
        std::fs::create_dir_all(dir).map_err(|e| TokenizerError::io(dir, e))?;
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| TokenizerError::io(&p, e))
        };
        write("tokenizer.json", spec.to_string())?;
        let config = json!({
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        write(
            "tokenizer_config.json",
            serde_json::to_string_pretty(&config).expect("JSON") + "\n",
        )?;
        if self.chat_template.is_usable() {
            write(
                "chat_template.jinja",
                self.chat_template.source().to_string(),
            )?;
        }
        Ok(())
    }

    /// Replaces the chat template (the user's choice, for a model without one or instead of its
    /// own).
    pub fn set_chat_template(&mut self, template: ChatTemplate) {
        self.chat_template = template;
    }

    /// The text of `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, skip_special).map_err(|e| e.to_string()),
            Inner::Spm(t) => t.decode(ids, skip_special),
        }
        .map_err(|e| self.err(format!("decoding: {e}")))
    }

    /// The id of token `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(text),
            Inner::Spm(t) => t.token_id(text),
        }
    }

    /// The text of token `id`, if it is in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Hf(t) => t.id_to_token(id),
            Inner::Spm(t) => t.token_text(id).map(str::to_string),
        }
    }

    /// The bos id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The eos id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The id batches are padded with for a model that embeds `vocab_size` ids: the pad
    /// token if the model embeds it (one added to the tokenizer only does not count), else the
    /// eos token (as TRL sets `pad_token = eos_token` when a tokenizer has none), else 0.
    /// Padding sits after each sample and its labels are ignored, so under the causal mask the
    /// id changes no loss; it only has to be in the vocabulary.
    pub fn pad_id(&self, vocab_size: usize) -> u32 {
        self.pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .filter(|&id| (id as usize) < vocab_size)
            .or(self.eos_id())
            .unwrap_or(0)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(t) => t.len(),
        }
    }

    /// Renders `messages` with the chat template, with the byte ranges of its
    /// `{% generation %}` blocks (see [`ChatTemplate::render_spans`]).
    pub fn apply_chat_template_spans(
        &self,
        messages: &[crate::ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<crate::RenderedChat, TokenizerError> {
        self.chat_template.render_spans(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }

    /// Renders `messages` with the chat template (see [`ChatTemplate::render`]).
    pub fn apply_chat_template(
        &self,
        messages: &[crate::ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.chat_template.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }

    fn err(&self, problem: String) -> TokenizerError {
        TokenizerError::Invalid {
            path: self.source.clone(),
            problem,
        }
    }
}
