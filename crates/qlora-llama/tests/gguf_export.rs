//! A merged model as a llama.cpp GGUF model file (`save_gguf`, `merge --format gguf`, issue
//! #26) against what llama.cpp's `convert_hf_to_gguf.py` writes for PEFT's merge of the same
//! adapter (`tests/fixtures/gguf-merged/`, made by `tests/fixtures/scripts/make_gguf_merged.py`
//! and `make_gguf_phi3.py`): the same metadata (hyperparameters, tokenizer), tensor names,
//! shapes and types, values within one rounding step of the type (PEFT and we merge in f32 in
//! different orders); Llama 3.1's RoPE scaling as `rope_freqs`, and Phi-3 with LongRoPE; read
//! back, each file gives transformers' logits and the base's tokens; what it cannot write is
//! refused by name.

use std::path::PathBuf;

use burn::tensor::Device;
use qlora_llama::{
    GgmlType, GgufFile, GgufValue, LlamaForCausalLM, LlamaTokenizer, TokenizerFiles,
};
use qlora_nn::{LoraApplier, LoraModel, PeftAdapter};

#[path = "support/init_refs.rs"]
mod init_refs;
#[path = "support/logits.rs"]
mod logits;
use init_refs::{f32_tensors, fixture};
use logits::values;

const BASE: &str = "score-models/llama3";

/// The base with the fixture's PEFT adapter merged and unloaded.
fn merged(device: &Device) -> LlamaForCausalLM {
    let applier = LoraApplier::base_only(None, device);
    let mut model = LlamaForCausalLM::load(fixture(BASE), &applier).unwrap();
    let adapter = PeftAdapter::load(fixture("gguf-merged/adapter"), device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    model.merge_and_unload()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("qlora-gguf-export-{}-{name}", std::process::id()))
}

/// Keys the converter writes that are not ours to match: the display name (from the folder's
/// name), its size label, and `add_sep_token` (a BERT flag it writes for every BPE vocabulary).
const NOT_COMPARED: [&str; 3] = [
    "general.name",
    "general.size_label",
    "tokenizer.ggml.add_sep_token",
];

/// Asserts that our GGUF file at `ours` has the converter's metadata (but [`NOT_COMPARED`]),
/// tensor names, shapes and types, and values within one rounding step of the type.
fn assert_like_converter(ours: &std::path::Path, theirs: &std::path::Path, label: &str) {
    let ours = GgufFile::open(ours).unwrap();
    let theirs = GgufFile::open(theirs).unwrap();
    for (k, v) in &theirs.metadata {
        if NOT_COMPARED.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(ours.get(k), Some(v), "{label}: metadata `{k}`");
    }
    for k in ours.metadata.keys() {
        assert!(
            theirs.metadata.contains_key(k),
            "{label}: `{k}` is not a key the converter writes"
        );
    }
    assert_eq!(
        ours.tensors.keys().collect::<Vec<_>>(),
        theirs.tensors.keys().collect::<Vec<_>>(),
        "{label}: tensor names"
    );
    for (name, info) in &theirs.tensors {
        let mine = &ours.tensors[name];
        assert_eq!(
            (&mine.dims, mine.ty),
            (&info.dims, info.ty),
            "{label}: {name}"
        );
        let ((_, a), (_, b)) = (ours.read_f32(name).unwrap(), theirs.read_f32(name).unwrap());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        // One step of the type: f16 keeps 11 bits; Q8_0 steps by a block's max / 127.
        let step = match info.ty {
            GgmlType::F32 => 1e-6 * scale,
            GgmlType::F16 => 2f32.powi(-10) * scale,
            _ => scale / 127.0,
        };
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= step,
                "{label}: {name}[{k}]: {x} vs the converter's {y}"
            );
        }
    }
}

#[test]
fn merged_gguf_is_what_llama_cpp_s_converter_writes() {
    let model = merged(&Device::flex());
    for (ty, suffix) in [(GgmlType::F16, "f16"), (GgmlType::Q8_0, "q8_0")] {
        let path = tmp(suffix);
        model.save_gguf(&path, ty, fixture(BASE), "merged").unwrap();
        let theirs = fixture(&format!("gguf-merged/merged-{suffix}.gguf"));
        assert_like_converter(&path, &theirs, suffix);
        std::fs::remove_file(&path).unwrap();
    }
}

/// The logits of `model` at the ids of the safetensors fixture `reference`, against its
/// tensor `key`, within 1e-4 of their scale.
fn assert_reference_logits(model: &LlamaForCausalLM, reference: &str, key: &str) {
    let got = values(model.forward(init_refs::input_ids(reference, &Device::flex()), None));
    logits::check(reference, got, &f32_tensors(reference)[key].1, 1e-4);
}

/// A float model read from a folder or file (no adapters).
fn load(path: &std::path::Path) -> LlamaForCausalLM {
    LlamaForCausalLM::load(path, &LoraApplier::base_only(None, &Device::flex())).unwrap()
}

/// The fixture folder `gguf-merged/<name>`: read, it gives transformers' logits
/// (`<name>/reference.safetensors`); written as F32 GGUF (returned), it is what the converter
/// wrote (`<name>-f32.gguf`, [`assert_like_converter`]); read back, ours and the converter's
/// file give transformers' logits.
fn converter_round_trip(name: &str) -> PathBuf {
    let folder = fixture(&format!("gguf-merged/{name}"));
    let reference = format!("gguf-merged/{name}/reference.safetensors");
    let theirs = fixture(&format!("gguf-merged/{name}-f32.gguf"));
    let model = load(&folder);
    assert_reference_logits(&model, &reference, "logits");
    let path = tmp(&format!("{name}.gguf"));
    model
        .save_gguf(&path, GgmlType::F32, &folder, name)
        .unwrap();
    assert_like_converter(&path, &theirs, name);
    for file in [&path, &theirs] {
        assert_reference_logits(&load(file), &reference, "logits");
    }
    path
}

#[test]
fn llama3_rope_scaling_is_written_and_read_as_llama_cpp_s_rope_freqs() {
    // The divisors within f32 rounding of the converter's (1, smoothed, 8, 8 here).
    let path = converter_round_trip("llama3-rope");
    // And what was read from GGUF is written back with the same divisors.
    let again = tmp("llama3-rope-again.gguf");
    load(&path)
        .save_gguf(&again, GgmlType::F32, &path, "again")
        .unwrap();
    let divisors = |p: &std::path::Path| {
        GgufFile::open(p)
            .unwrap()
            .read_f32("rope_freqs.weight")
            .unwrap()
            .1
    };
    assert_eq!(divisors(&again), divisors(&path));
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&again).unwrap();
}

#[test]
fn merged_gguf_reads_back_with_the_merged_logits_and_the_base_s_tokens() {
    let device = Device::flex();
    let path = tmp("f32.gguf");
    merged(&device)
        .save_gguf(&path, GgmlType::F32, fixture(BASE), "merged")
        .unwrap();
    let back = LlamaForCausalLM::load(&path, &LoraApplier::base_only(None, &device)).unwrap();
    assert_reference_logits(&back, "gguf-merged/reference.safetensors", "logits_merged");
    let (hf, gguf) = (
        LlamaTokenizer::load(fixture(BASE)).unwrap(),
        LlamaTokenizer::load(&path).unwrap(),
    );
    for text in ["Say apple twice.", "What is 2 + 2?\n\nThe answer is 4!"] {
        assert_eq!(
            gguf.encode(text, true).unwrap(),
            hf.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!((gguf.bos_id(), gguf.eos_id()), (hf.bos_id(), hf.eos_id()));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn phi3_with_longrope_is_what_llama_cpp_s_converter_writes() {
    // Fused attn_qkv / ffn_up, the LongRoPE factor tensors, Phi-3's keys; read back at 24
    // positions, past the original context of 8: the long factors.
    std::fs::remove_file(converter_round_trip("phi3-longrope")).unwrap();
}

#[test]
fn gemma3_is_what_llama_cpp_s_converter_writes() {
    // Norms as 1 + w, both RoPE bases, linear scaling of the global one, the window, tied
    // embeddings, the SentencePiece vocabulary without a space prefix.
    std::fs::remove_file(converter_round_trip("gemma3")).unwrap();
}

#[test]
fn a_sentencepiece_folder_is_written_as_the_converter_writes_it() {
    let device = Device::flex();
    let folder = fixture("gguf-merged/spm");
    let theirs = fixture("gguf-merged/spm-f32.gguf");
    let model = LlamaForCausalLM::load(&folder, &LoraApplier::base_only(None, &device)).unwrap();
    let path = tmp("spm.gguf");
    model
        .save_gguf(&path, GgmlType::F32, &folder, "spm")
        .unwrap();
    // Pieces, scores and types from tokenizer.model, the added tokens (control and user
    // defined), the five rows past the tokenizer as [PAD<id>], bos / eos / unk, the flags and
    // the chat template: every key as the converter's.
    assert_like_converter(&path, &theirs, "spm");
    // Read back, the file's SentencePiece tokenizer encodes as transformers does.
    let gguf = LlamaTokenizer::load(&path).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("gguf-merged/spm/encodings.json")).unwrap())
            .unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(gguf.encode(text, true).unwrap(), want, "{text:?}");
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn what_gguf_export_cannot_write_is_refused_by_name() {
    let device = Device::flex();
    let path = tmp("refused.gguf");
    // Adapters not merged yet.
    let applier = LoraApplier::base_only(None, &device);
    let mut model = LlamaForCausalLM::load(fixture(BASE), &applier).unwrap();
    let adapter = PeftAdapter::load(fixture("gguf-merged/adapter"), &device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let e = model
        .save_gguf(&path, GgmlType::F16, fixture(BASE), "m")
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds adapters") && e.contains("q_proj"), "{e}");
    // A Gemma 3 that llama.cpp would run differently: the golden model's layers are
    // sliding, full, sliding, not llama.cpp's fixed five-then-one pattern.
    let gemma = LlamaForCausalLM::load(
        fixture("golden/families/gemma3/model"),
        &LoraApplier::base_only(None, &device),
    )
    .unwrap();
    let e = gemma
        .save_gguf(&path, GgmlType::F16, fixture("gguf-merged/gemma3"), "m")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 is full_attention") && e.contains("llama.cpp runs Gemma 3"),
        "{e}"
    );
    // A Gemma 3 folder with a byte-level BPE tokenizer only.
    let gemma = LlamaForCausalLM::load(
        fixture("gguf-merged/gemma3"),
        &LoraApplier::base_only(None, &device),
    )
    .unwrap();
    let e = gemma
        .save_gguf(&path, GgmlType::F16, fixture(BASE), "m")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.model") && e.contains("Gemma 3"),
        "{e}"
    );
    // A tensor type llama.cpp's converter does not write for a model here.
    let e = model
        .merge_and_unload()
        .save_gguf(&path, GgmlType::Q4_0, fixture(BASE), "m")
        .unwrap_err()
        .to_string();
    assert!(e.contains("Q4_0"), "{e}");
    assert!(!path.exists());
}

#[test]
fn a_gguf_base_s_tokenizer_keys_are_carried_over_whole() {
    let device = Device::flex();
    let base = tmp("base-f32.gguf");
    let model = merged(&device);
    model
        .save_gguf(&base, GgmlType::F32, fixture(BASE), "base")
        .unwrap();
    let again = tmp("again-f16.gguf");
    model
        .save_gguf(&again, GgmlType::F16, &base, "again")
        .unwrap();
    let (a, b) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&again).unwrap(),
    );
    let tok = |f: &GgufFile| -> Vec<(String, GgufValue)> {
        f.metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert!(tok(&a).len() >= 5);
    assert_eq!(tok(&a), tok(&b));
    std::fs::remove_file(&base).unwrap();
    std::fs::remove_file(&again).unwrap();
}
