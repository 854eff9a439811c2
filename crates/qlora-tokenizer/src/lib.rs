//! The tokenizer of a causal language model, with its special tokens and chat template.
//!
//! Training data becomes token ids here, the same way `transformers` makes them: HF
//! `tokenizer.json` run by the `tokenizers` crate (pure Rust), `tokenizer_config.json` for
//! bos/eos/pad and `add_bos_token`, the model's Jinja chat template rendered by `minijinja` with
//! Python's string methods. A GGUF file's vocabulary ([`GgufVocab`], read by the model crate
//! that reads the file) becomes byte-level BPE or SentencePiece BPE as llama.cpp runs them.
//! No model family is named: the data pipeline and every model crate share this one.
#![warn(missing_docs)]

mod chat;
mod error;
mod spm;
mod tokenizer;
mod vocab;

pub use chat::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, RenderedChat};
pub use error::TokenizerError;
pub use tokenizer::{Tokenizer, gguf_pre_name};
pub use vocab::GgufVocab;
