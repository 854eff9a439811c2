//! [`GgufVocab`]: a tokenizer as a GGUF file stores it, the keys llama.cpp writes
//! (`tokenizer.ggml.*`, `tokenizer.chat_template`). The GGUF reader (a model crate's) fills it
//! in; [`crate::Tokenizer::from_gguf_vocab`] builds the tokenizer with llama.cpp's defaults.

/// The tokenizer keys of a GGUF file, `None` where the file lacks one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// The file it came from (named in errors).
    pub path: String,
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's llama.cpp name (`default` when absent).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 3 control, 4 user-defined (all 1 when absent).
    pub token_types: Option<Vec<i64>>,
    /// `tokenizer.ggml.scores`: SentencePiece merge scores (all 0 when absent).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.merges`: the BPE merges, `"a b"` each (required for `gpt2`).
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u64>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u64>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u64>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}
