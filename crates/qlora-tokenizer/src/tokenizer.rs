//! [`Tokenizer`]: the model's tokenizer with its special tokens and chat template, read from
//! `tokenizer.json` (+ `tokenizer_config.json`, run by HF `tokenizers`, pure Rust) or built from a
//! GGUF file's vocabulary: byte-level BPE from its merges (`tokenizer.ggml.model = gpt2`), or
//! SentencePiece BPE from its scores (`llama`, see `spm`).

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer as HfTokenizer;

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
    /// Whether `encode(.., true)` prepends the bos token.
    pub add_bos: bool,
    /// The chat template (ChatML when the model names none).
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
            chat_template: ChatTemplate::new(vocab.chat_template.as_deref(), &path)?,
            source: path,
        })
    }

    /// Reads `tokenizer.json` in `dir`, with `tokenizer_config.json` (chat template, bos/eos,
    /// `add_bos_token`) and `chat_template.jinja` when present.
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
        Ok(Self {
            inner: Inner::Hf(Box::new(inner)),
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            pad_token: token("pad_token"),
            add_bos: cfg
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat_template,
            source: path,
        })
    }

    /// Token ids of `text`; special-token texts in it (`<|im_start|>`) become their ids. With
    /// `add_bos` and a tokenizer that adds one, the bos id comes first.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_bos
            && self.add_bos
            && let Some(b) = self.bos_id()
        {
            ids.push(b);
        }
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| self.err(format!("encoding: {e}")))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Inner::Spm(t) => ids.extend(
                t.encode(text)
                    .map_err(|e| self.err(format!("encoding: {e}")))?,
            ),
        }
        Ok(ids)
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
