//! The tokenizer a GGUF file embeds: its `tokenizer.*` keys read into a
//! [`qlora_tokenizer::GgufVocab`], which `qlora-tokenizer` builds; and [`TokenizerFiles::load`],
//! the tokenizer of whatever [`crate::LlamaForCausalLM::load`] takes (a `.gguf` file or a HF
//! folder).

use std::path::Path;

use qlora_tokenizer::{GgufVocab, Tokenizer, TokenizerError};

use crate::{GgufFile, GgufValue, LlamaError};

/// Tokenizer constructors from model files (a GGUF file's metadata or a model path), for
/// [`qlora_tokenizer::Tokenizer`]: bring this trait into scope to call them.
pub trait TokenizerFiles: Sized {
    /// The tokenizer stored in a GGUF file (see [`Tokenizer::from_gguf_vocab`]).
    fn from_gguf(f: &GgufFile) -> Result<Self, LlamaError>;

    /// The tokenizer of the model at `path`: the vocabulary embedded in a `.gguf` file, or
    /// `tokenizer.json` in a HF folder.
    fn load(path: impl AsRef<Path>) -> Result<Self, LlamaError>;
}

impl TokenizerFiles for Tokenizer {
    fn from_gguf(f: &GgufFile) -> Result<Self, LlamaError> {
        Ok(Tokenizer::from_gguf_vocab(gguf_vocab(f)?)?)
    }

    fn load(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            Self::from_gguf(&GgufFile::open(path)?)
        } else {
            Ok(Tokenizer::from_dir(path)?)
        }
    }
}

/// The `tokenizer.*` keys of `f`, each checked for its type.
pub fn gguf_vocab(f: &GgufFile) -> Result<GgufVocab, TokenizerError> {
    let path = f.path().display().to_string();
    let err = |problem: String| TokenizerError::Invalid {
        path: path.clone(),
        problem,
    };
    // A key of another type counts as absent, as llama.cpp reads it.
    let list = |key: &str| match f.get(key) {
        Some(GgufValue::Array(a)) => Some(a),
        _ => None,
    };
    let strings = |key: &str| -> Result<Option<Vec<String>>, TokenizerError> {
        list(key)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err(format!("`{key}` is not a list of strings")))
            })
            .transpose()
    };
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| err("`tokenizer.ggml.model` is missing".into()))?;
    let tokens = strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| err("`tokenizer.ggml.tokens` is missing".into()))?;
    let token_types = list("tokenizer.ggml.token_type")
        .map(|a| {
            a.iter()
                .map(GgufValue::as_i64)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("`tokenizer.ggml.token_type` is not a list of integers".into()))
        })
        .transpose()?;
    let scores = list("tokenizer.ggml.scores")
        .map(|a| {
            a.iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("`tokenizer.ggml.scores` is not a list of numbers".into()))
        })
        .transpose()?;
    let text = |key: &str| f.get(key).and_then(GgufValue::as_str).map(str::to_string);
    let id = |key: &str| f.get(key).and_then(GgufValue::as_u64);
    let flag = |key: &str| match f.get(key) {
        Some(GgufValue::Bool(b)) => Some(*b),
        _ => None,
    };
    Ok(GgufVocab {
        path: path.clone(),
        model: model.to_string(),
        pre: text("tokenizer.ggml.pre"),
        tokens,
        token_types,
        scores,
        merges: strings("tokenizer.ggml.merges")?,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id"),
        padding_token_id: id("tokenizer.ggml.padding_token_id"),
        add_bos_token: flag("tokenizer.ggml.add_bos_token"),
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
        chat_template: text("tokenizer.chat_template"),
    })
}
