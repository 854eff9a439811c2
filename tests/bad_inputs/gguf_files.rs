//! Malformed GGUF files, made with our GGUF writer and then broken.

use std::path::Path;

use burn::tensor::Device;
use burn_qlora::llama::{GgmlType, GgufFile, GgufValue, GgufWriter, LlamaForCausalLM};
use burn_qlora::nn::LoraApplier;

use crate::{Case, copy_fixture, load_model};

/// A small well-formed GGUF: llama architecture, two hyper-parameters, two tensors.
pub fn good_gguf(arch: &str) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", GgufValue::Str(arch.into()));
    w.meta("general.name", GgufValue::Str("corpus".into()));
    w.meta("llama.block_count", GgufValue::U64(1));
    let v: Vec<f32> = (0..1024).map(|i| (i as f32 * 0.37).sin()).collect();
    w.tensor("token_embd.weight", &[4, 256], GgmlType::F32, &v);
    w.tensor("output_norm.weight", &[256], GgmlType::Q8_0, &v[..256]);
    w.to_bytes()
}

fn open(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<(), String> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    GgufFile::open(&p).map(|_| ()).map_err(|e| e.to_string())
}

fn case(name: &'static str, want: &'static [&'static str], f: fn(Vec<u8>) -> Vec<u8>) -> Case {
    Case::new(name, want, move |d| {
        open(d, "model.gguf", f(good_gguf("llama")))
    })
}

/// The byte offset just past the name of tensor `name` (its dimension count follows).
fn after_name(b: &[u8], name: &str) -> usize {
    b.windows(name.len())
        .position(|x| x == name.as_bytes())
        .unwrap()
        + name.len()
}

pub fn cases() -> Vec<Case> {
    vec![
        case("gguf-bad-magic", &["model.gguf", "bad magic"], |b| {
            [b"GGML".as_slice(), &b[4..]].concat()
        }),
        case(
            "gguf-version",
            &["model.gguf", "unsupported GGUF version 9"],
            |b| [&b[..4], &9u32.to_le_bytes()[..], &b[8..]].concat(),
        ),
        case("gguf-truncated-data", &["model.gguf", "truncated"], |b| {
            b[..b.len() - 100].to_vec()
        }),
        case("gguf-truncated-header", &["model.gguf", "truncated"], |b| {
            b[..30].to_vec()
        }),
        case(
            "gguf-huge-tensor-count",
            &["model.gguf", "tensor count", "cannot fit"],
            |mut b| {
                b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
                b
            },
        ),
        case(
            "gguf-huge-metadata-count",
            &["model.gguf", "metadata count", "cannot fit"],
            |mut b| {
                b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
                b
            },
        ),
        case(
            "gguf-huge-string",
            &["model.gguf", "metadata key 0", "truncated"],
            |mut b| {
                // The first metadata key's length.
                b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
                b
            },
        ),
        case(
            "gguf-unsupported-tensor-type",
            &["token_embd.weight", "Q4_K"],
            |mut b| {
                // name, then n_dims (u32), two dims (u64 each), then the type id.
                let pos = after_name(&b, "token_embd.weight") + 4 + 16;
                b[pos..pos + 4].copy_from_slice(&12u32.to_le_bytes());
                b
            },
        ),
        case(
            "gguf-zero-dims",
            &["token_embd.weight", "0 dimensions"],
            |mut b| {
                let pos = after_name(&b, "token_embd.weight");
                b[pos..pos + 4].copy_from_slice(&0u32.to_le_bytes());
                b
            },
        ),
        case(
            "gguf-tensor-past-end",
            &["model.gguf", "output_norm.weight"],
            |mut b| {
                // The second tensor's offset (after its two... one dim and its type).
                let pos = after_name(&b, "output_norm.weight") + 4 + 8 + 4;
                b[pos..pos + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
                b
            },
        ),
        Case::new("gguf-not-llama", &["model.gguf", "gpt2"], |d| {
            let p = d.join("model.gguf");
            std::fs::write(&p, good_gguf("gpt2")).unwrap();
            load_model(&p)
        }),
        Case::new(
            "gguf-missing-hyperparameters",
            &["model.gguf", "llama.embedding_length"],
            |d| {
                let p = d.join("model.gguf");
                std::fs::write(&p, good_gguf("llama")).unwrap();
                load_model(&p)
            },
        ),
        // `merge --format gguf` of a folder whose tokenizer.model is not SentencePiece's.
        Case::new(
            "gguf-export-bad-tokenizer-model",
            &["tokenizer.model", "not a SentencePiece model"],
            |d| {
                copy_fixture("../gguf-merged/spm", d);
                std::fs::write(d.join("tokenizer.model"), b"{\"not\": \"protobuf\"}").unwrap();
                let applier = LoraApplier::base_only(None, &Device::flex());
                let model = LlamaForCausalLM::load(d, &applier).map_err(|e| e.to_string())?;
                model
                    .save_gguf(d.join("out.gguf"), GgmlType::F16, d, "corpus")
                    .map_err(|e| e.to_string())
            },
        ),
    ]
}
