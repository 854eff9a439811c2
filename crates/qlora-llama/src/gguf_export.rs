//! A model (merged, or without adapters) as a llama.cpp GGUF model file, in the layout
//! llama.cpp's `convert_hf_to_gguf.py` writes (`merge --format gguf`):
//!
//! - `general.architecture` (`llama` for LLaMA and Mistral, `qwen2`, `qwen3`), `general.type =
//!   "model"`, `general.name`, `general.file_type`, `general.quantization_version`;
//! - the architecture's hyperparameters (`<arch>.block_count`, `context_length`,
//!   `embedding_length`, `feed_forward_length`, `attention.head_count`, `head_count_kv`,
//!   `key_length`, `value_length`, `rope.freq_base`, `attention.layer_norm_rms_epsilon`,
//!   `vocab_size`, and for `llama` `rope.dimension_count`; linear RoPE scaling). The converter
//!   writes `key_length` / `value_length` only where `config.json` names `head_dim`; they are
//!   always written here (the value llama.cpp derives otherwise), which changes nothing it
//!   reads;
//! - the tokenizer: a GGUF base's `tokenizer.*` keys as they are, or a HF folder's byte-level
//!   BPE `tokenizer.json` as the converter writes it (`tokenizer.ggml.model = "gpt2"`, the
//!   pre-tokenizer's llama.cpp name, tokens by id with ids the vocabulary skips as
//!   `[PAD<id>]`, types: special added tokens control (3), other added tokens user-defined (4),
//!   the rest normal (1); merges as `"a b"`; bos/eos/pad ids; whether bos/eos are added; the
//!   chat template);
//! - tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ...), vectors F32 and
//!   matrices in the chosen type (F32, F16, BF16 or Q8_0; Q8_0 falls back to F16 where a row is
//!   not a multiple of 32 long, as the converter does), `llama`'s Q and K rows permuted to
//!   llama.cpp's interleaved RoPE order.
//!
//! Not written yet, and refused by name: Phi-3 and Gemma 3 models, tokenizers other than
//! byte-level BPE in a HF folder (SentencePiece ones: Llama 2, Mistral, Phi-3, Gemma; a GGUF
//! base's own vocabulary of any kind is carried over), RoPE scaling other than linear.

use std::path::Path;

use burn::tensor::Tensor;
use qlora_nn::{AdaptedLinear, LoraModel};
use serde_json::Value;

use crate::gguf::{GgmlType, GgufFile, GgufValue};
use crate::gguf_model::{Convert, gguf_name, permute_rows};
use crate::save::host;
use crate::{
    GgufWriter, LlamaConfig, LlamaError, LlamaForCausalLM, LlamaTokenizer as Tokenizer, ModelType,
    RopeScaling,
};

/// GGUF's `general.file_type` of a model whose matrices are `ty` (llama.cpp's `LLAMA_FTYPE_*`).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
    }
}

/// A tensor under its HF name: PyTorch shape and f32 values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

impl LlamaForCausalLM {
    /// Writes the model as a GGUF model file at `path` (see the module docs), its matrices as
    /// `ty` (F32, F16, BF16 or Q8_0), the tokenizer taken from `tokenizer` (the base's HF
    /// folder or `.gguf` file), `name` as `general.name`. Errors, before writing anything, if a
    /// layer still holds adapters (merge them first), or the family, tokenizer or RoPE scaling
    /// is one this writer does not handle.
    pub fn save_gguf(
        &self,
        path: impl AsRef<Path>,
        ty: GgmlType,
        tokenizer: impl AsRef<Path>,
        name: &str,
    ) -> Result<(), LlamaError> {
        let path = path.as_ref();
        let c = &self.config;
        let (mut w, family) = gguf_header(c, path, ty, tokenizer.as_ref(), name)?;
        let refuse = |problem: String| LlamaError::format(path, problem);
        for (hf, shape, data) in self.dense_tensors(path)? {
            let (gname, convert) = gguf_name(&hf, family)
                .ok_or_else(|| refuse(format!("`{hf}` has no llama.cpp tensor name")))?;
            let data = match convert {
                Convert::Same => data,
                Convert::Unpermute { is_k } => {
                    let heads = if is_k {
                        c.num_key_value_heads
                    } else {
                        c.num_attention_heads
                    };
                    let cols = shape.get(1).copied().unwrap_or(1);
                    permute_rows(&data, shape[0], cols, heads)
                }
                Convert::UnitOffset => unreachable!("Gemma is refused by gguf_header"),
            };
            let t = match ty {
                _ if shape.len() == 1 => GgmlType::F32,
                GgmlType::Q8_0 if !shape[shape.len() - 1].is_multiple_of(32) => GgmlType::F16,
                t => t,
            };
            w.tensor(&gname, &shape, t, &data);
        }
        w.write(path)
    }

    /// The checks [`LlamaForCausalLM::save_gguf`] makes before any tensor (family, tensor type,
    /// RoPE scaling, tokenizer), for a model of `config`: callers run them before a long merge.
    pub fn check_gguf_export(
        config: &LlamaConfig,
        path: impl AsRef<Path>,
        ty: GgmlType,
        tokenizer: impl AsRef<Path>,
    ) -> Result<(), LlamaError> {
        gguf_header(config, path.as_ref(), ty, tokenizer.as_ref(), "check").map(|_| ())
    }

    /// Every tensor as HF names it, with its PyTorch shape and values (f32; an NF4 layer
    /// dequantized). Errors if a layer holds adapters.
    fn dense_tensors(&self, path: &Path) -> Result<Vec<NamedTensor>, LlamaError> {
        let mut out = Vec::new();
        let mut matrix = |name: String, t: Tensor<2>| {
            let shape = t.dims().to_vec();
            out.push((name, shape, host(t)));
        };
        matrix(
            "model.embed_tokens.weight".into(),
            self.model.embed_tokens.weight.val(),
        );
        if let Some(w) = &self.lm_head {
            matrix("lm_head.weight".into(), w.val());
        }
        for (p, layer) in self.linears() {
            let weight = match &layer {
                AdaptedLinear::Lora(_) | AdaptedLinear::QLora(_)
                    if layer.adapters().is_some_and(|a| !a.names().is_empty()) =>
                {
                    return Err(LlamaError::format(
                        path,
                        format!("`{p}` holds adapters: merge them first (merge_and_unload)"),
                    ));
                }
                AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.weight.val().transpose(),
                other => other.base_weight().expect("a base weight"),
            };
            matrix(format!("{p}.weight"), weight);
        }
        let mut vectors: Vec<(String, Tensor<1>)> = self.norm_weights();
        for (p, layer) in self.linears() {
            let bias = match layer {
                AdaptedLinear::Frozen(l) | AdaptedLinear::Trained(l) => l.bias.as_ref(),
                AdaptedLinear::Lora(l) => l.base.bias.as_ref(),
                AdaptedLinear::QLora(l) => l.bias.as_ref(),
            };
            if let Some(b) = bias {
                vectors.push((format!("{p}.bias"), b.val()));
            }
        }
        for (name, t) in vectors {
            let shape = t.dims().to_vec();
            out.push((name, shape, host(t)));
        }
        Ok(out)
    }
}

/// The GGUF file's metadata for a model of `c` (every check but the tensors'), and the family
/// whose tensor names it uses.
fn gguf_header(
    c: &LlamaConfig,
    path: &Path,
    ty: GgmlType,
    tokenizer: &Path,
    name: &str,
) -> Result<(GgufWriter, ModelType), LlamaError> {
    let refuse = |problem: String| LlamaError::format(path, problem);
    let arch = match c.model_type {
        ModelType::Llama | ModelType::Mistral => "llama",
        ModelType::Qwen2 => "qwen2",
        ModelType::Qwen3 => "qwen3",
        other => {
            return Err(refuse(format!(
                "`{}` models are not written as GGUF yet (llama, mistral, qwen2, qwen3 are)",
                other.as_str()
            )));
        }
    };
    if !matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    ) {
        return Err(refuse(format!(
            "{ty:?} tensors (F32, F16, BF16 or Q8_0 are written)"
        )));
    }
    let family = if arch == "llama" {
        ModelType::Llama
    } else {
        c.model_type
    };
    let key = |k: &str| format!("{arch}.{k}");
    let mut w = GgufWriter::new();
    w.meta("general.architecture", GgufValue::Str(arch.into()))
        .meta("general.type", GgufValue::Str("model".into()))
        .meta("general.name", GgufValue::Str(name.into()))
        .meta(
            &key("block_count"),
            GgufValue::U32(c.num_hidden_layers as u32),
        )
        .meta(
            &key("context_length"),
            GgufValue::U32(c.max_position_embeddings as u32),
        )
        .meta(
            &key("embedding_length"),
            GgufValue::U32(c.hidden_size as u32),
        )
        .meta(
            &key("feed_forward_length"),
            GgufValue::U32(c.intermediate_size as u32),
        )
        .meta(
            &key("attention.head_count"),
            GgufValue::U32(c.num_attention_heads as u32),
        )
        .meta(
            &key("attention.head_count_kv"),
            GgufValue::U32(c.num_key_value_heads as u32),
        )
        .meta(&key("rope.freq_base"), GgufValue::F32(c.rope.theta as f32))
        .meta(
            &key("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_norm_eps as f32),
        )
        .meta(
            &key("attention.key_length"),
            GgufValue::U32(c.head_dim as u32),
        )
        .meta(
            &key("attention.value_length"),
            GgufValue::U32(c.head_dim as u32),
        )
        .meta("general.file_type", GgufValue::U32(file_type(ty)))
        .meta(&key("vocab_size"), GgufValue::U32(c.vocab_size as u32));
    // The converter writes the rotated width for `llama` only (the others rotate whole
    // heads, which llama.cpp assumes without it).
    if arch == "llama" {
        w.meta(
            &key("rope.dimension_count"),
            GgufValue::U32(c.rotary_dim as u32),
        );
    }
    match c.rope.scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            w.meta(&key("rope.scaling.type"), GgufValue::Str("linear".into()))
                .meta(&key("rope.scaling.factor"), GgufValue::F32(factor as f32));
        }
        ref other => {
            return Err(refuse(format!(
                "RoPE scaling {other:?} is not written as GGUF yet (none and linear are)"
            )));
        }
    }
    w.meta("general.quantization_version", GgufValue::U32(2));
    for (k, v) in tokenizer_meta(tokenizer, c.vocab_size)? {
        w.meta(&k, v);
    }
    Ok((w, family))
}

/// The `tokenizer.*` metadata for the base at `source` (a `.gguf` file: its own keys; a HF
/// folder: its `tokenizer.json`), padded to `vocab_size` tokens as the converter pads (an id
/// past it is an error, as there).
fn tokenizer_meta(
    source: &Path,
    vocab_size: usize,
) -> Result<Vec<(String, GgufValue)>, LlamaError> {
    if source.is_file() {
        let f = GgufFile::open(source)?;
        return Ok(f
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect());
    }
    let file = source.join("tokenizer.json");
    let bad = |problem: String| LlamaError::format(&file, problem);
    let text = std::fs::read_to_string(&file).map_err(|e| LlamaError::io(&file, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" || json["decoder"]["type"] != "ByteLevel" {
        return Err(bad(
            "only byte-level BPE tokenizers are written as GGUF yet (SentencePiece ones are not)"
                .into(),
        ));
    }
    let pre = qlora_tokenizer::gguf_pre_name(&json["pre_tokenizer"]).ok_or_else(|| {
        bad(
            "its pre-tokenizer is none that llama.cpp names here (gpt-2, smollm, llama-bpe, qwen2)"
                .into(),
        )
    })?;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |t: &str, id: Option<u64>, ty: i32| -> Result<(), LlamaError> {
        let id = id.ok_or_else(|| bad(format!("token `{t}` has no integer id")))? as usize;
        if id >= tokens.len() {
            // The converter refuses it too: llama.cpp will not load more tokens than rows.
            return Err(bad(format!(
                "token `{t}` has id {id}, past the model's vocab_size {vocab_size}"
            )));
        }
        tokens[id] = Some((t.to_string(), ty));
        Ok(())
    };
    for (t, id) in vocab {
        put(t, id.as_u64(), 1)?;
    }
    for a in json["added_tokens"].as_array().into_iter().flatten() {
        let t = a["content"].as_str().unwrap_or_default();
        put(
            t,
            a["id"].as_u64(),
            if a["special"] == true { 3 } else { 4 },
        )?;
    }
    let (tokens, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some((t, ty)) => (GgufValue::Str(t), GgufValue::I32(ty)),
            None => (GgufValue::Str(format!("[PAD{i}]")), GgufValue::I32(5)),
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is missing".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) => match (
                p.first().and_then(Value::as_str),
                p.get(1).and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) if p.len() == 2 => Some(format!("{a} {b}")),
                _ => None,
            },
            _ => None,
        })
        .map(|m| {
            m.map(GgufValue::Str)
                .ok_or_else(|| bad("a merge is neither \"a b\" nor a pair".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tok = Tokenizer::from_dir(source)?;
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), GgufValue::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
    ];
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    for (k, id) in [
        ("bos_token_id", id_of(&tok.bos_token)),
        ("eos_token_id", id_of(&tok.eos_token)),
        ("padding_token_id", id_of(&tok.pad_token)),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{k}"), GgufValue::U32(id)));
        }
    }
    // Whether encoding adds bos / eos, as the tokenizer does it (its post-processor or flags).
    let probe = tok.encode("a", true)?;
    let plain = tok.encode("a", false)?;
    let adds_bos = probe.len() > plain.len() && probe.first() == tok.bos_id().as_ref();
    let adds_eos = probe.len() > plain.len() && probe.last() == tok.eos_id().as_ref();
    meta.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(adds_bos),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".into(),
        GgufValue::Bool(adds_eos),
    ));
    if tok.chat_template.is_usable() {
        meta.push((
            "tokenizer.chat_template".into(),
            GgufValue::Str(tok.chat_template.source().to_string()),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::tokenizer_meta;
    use crate::{GgufFile, GgufValue, GgufWriter, LlamaTokenizer, TokenizerFiles};

    fn tokenizer_dir(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizers")
            .join(name)
    }

    /// A HF tokenizer written as GGUF metadata and read back tokenizes as the HF one does, under
    /// the pre-tokenizer name llama.cpp gives it.
    #[test]
    fn hf_bpe_tokenizers_round_trip_through_gguf_metadata() {
        for (name, pre) in [
            ("qwen2_5", "qwen2"),
            ("qwen3", "qwen2"),
            ("llama3", "llama-bpe"),
        ] {
            let dir = tokenizer_dir(name);
            let hf = LlamaTokenizer::from_dir(&dir).unwrap();
            let mut w = GgufWriter::new();
            for (k, v) in tokenizer_meta(&dir, hf.vocab_size()).unwrap() {
                w.meta(&k, v);
            }
            let path =
                std::env::temp_dir().join(format!("qlora-tok-{name}-{}.gguf", std::process::id()));
            w.write(&path).unwrap();
            let f = GgufFile::open(&path).unwrap();
            assert_eq!(
                f.get("tokenizer.ggml.pre"),
                Some(&GgufValue::Str(pre.into())),
                "{name}"
            );
            let gguf = LlamaTokenizer::from_gguf(&f).unwrap();
            for text in [
                "Hello world, 12345 apples!",
                "  two  spaces\n\nand lines 2024-12-07",
                "Ünïcödé — 数字 42",
            ] {
                assert_eq!(
                    gguf.encode(text, false).unwrap(),
                    hf.encode(text, false).unwrap(),
                    "{name}: {text:?}"
                );
            }
            std::fs::remove_file(&path).unwrap();
        }
    }
}
