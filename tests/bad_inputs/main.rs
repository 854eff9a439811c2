//! The bad-input corpus: malformed files of every kind this project reads, each generated here
//! from a good file (never a hand-edited binary), each with the error it must give.
//!
//! Every case must come back as an `Err` whose message names the file and says what is wrong;
//! a panic, an `Ok`, or a vague message fails the case. Writers that fail must leave no file
//! behind. The cases of one kind live in one module; `fuzz` mutates good files at random (a
//! bounded, seeded count) and asserts that no parser panics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

mod adapter_files;
mod data_files;
mod dataset_files;
mod fuzz;
mod gguf_files;
mod model_files;
mod quant_state;
mod safetensors_files;

#[path = "../support/byte_tokenizer.rs"]
mod byte_tokenizer;

/// Builds a case's input in the given folder and reads it.
pub type Check = Box<dyn FnOnce(&Path) -> Result<(), String>>;

/// One malformed input and the error it must produce.
pub struct Case {
    /// Short unique name; also the name of its folder.
    pub name: &'static str,
    /// Writes the input into the folder and runs the reader on it.
    pub run: Check,
    /// What the error must contain: the file's name, then what is wrong.
    pub want: Vec<&'static str>,
}

impl Case {
    /// A case: `run` builds the input in its folder and reads it, `want` the error's words.
    pub fn new(
        name: &'static str,
        want: &[&'static str],
        run: impl FnOnce(&Path) -> Result<(), String> + 'static,
    ) -> Self {
        Self {
            name,
            run: Box::new(run),
            want: want.to_vec(),
        }
    }
}

/// The test fixtures folder.
pub fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(p)
}

/// Copies the files of fixture folder `src` into `dir`.
pub fn copy_fixture(src: &str, dir: &Path) {
    for e in std::fs::read_dir(fixture(src)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// The files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<panic>".into())
}

#[test]
fn every_malformed_input_is_a_named_error() {
    let root = std::env::temp_dir().join(format!("qlora-bad-inputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cases: Vec<Case> = [
        safetensors_files::cases(),
        quant_state::cases(),
        model_files::cases(),
        adapter_files::cases(),
        gguf_files::cases(),
        data_files::cases(),
        dataset_files::cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let total = cases.len();
    let mut names = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in cases {
        assert!(names.insert(case.name), "two cases named {}", case.name);
        let dir = root.join(case.name);
        std::fs::create_dir_all(&dir).unwrap();
        let run = case.run;
        match catch_unwind(AssertUnwindSafe(|| run(&dir))) {
            Err(p) => failures.push(format!("{}: PANIC: {}", case.name, panic_text(p))),
            Ok(Ok(())) => failures.push(format!("{}: accepted", case.name)),
            Ok(Err(e)) => {
                let missing: Vec<_> = case.want.iter().filter(|w| !e.contains(**w)).collect();
                if !missing.is_empty() {
                    failures.push(format!("{}: error lacks {missing:?}: {e}", case.name));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "bad-input corpus: {total} cases, {} rejected as expected",
        total - failures.len()
    );
    assert!(total >= 50, "the corpus has only {total} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Loads the model at `path` (float base, Flex), as the examples do.
pub fn load_model(path: &Path) -> Result<(), String> {
    use burn_qlora::llama::LlamaForCausalLM;
    use burn_qlora::nn::LoraApplier;
    LlamaForCausalLM::load(
        path,
        &LoraApplier::base_only(None, &burn::tensor::Device::flex()),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Splits a safetensors file into its header (as JSON) and data section.
pub fn split_safetensors(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

/// A safetensors file from a header text and a data section.
pub fn join_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// Rewrites the header of the safetensors file at `path` with `f`, the data unchanged.
pub fn edit_header(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let (mut h, data) = split_safetensors(&std::fs::read(path).unwrap());
    f(&mut h);
    let text = serde_json::to_string(&h).unwrap();
    std::fs::write(path, join_safetensors(&text, &data)).unwrap();
}

/// Replaces the bytes of tensor `name` (and its header entry's shape and dtype) in the
/// safetensors file at `path`, or adds it if absent, keeping every other tensor.
pub fn replace_tensor(path: &Path, name: &str, dtype: &str, shape: &[usize], bytes: Vec<u8>) {
    let entry = serde_json::json!({"dtype": dtype, "shape": shape});
    rebuild(path, |entries| {
        match entries.iter_mut().find(|(k, _, _)| k == name) {
            Some(e) => (e.1, e.2) = (entry, bytes),
            None => entries.push((name.to_string(), entry, bytes)),
        }
    });
}

/// Removes tensor `name` from the safetensors file at `path`, data and all.
pub fn drop_tensor(path: &Path, name: &str) {
    rebuild(path, |entries| entries.retain(|(k, _, _)| k != name));
}

type Entries = Vec<(String, serde_json::Value, Vec<u8>)>;

/// Rewrites the safetensors file at `path` from its tensors as edited by `f`, laid out
/// contiguously in order (the metadata kept).
fn rebuild(path: &Path, f: impl FnOnce(&mut Entries)) {
    let (h, data) = split_safetensors(&std::fs::read(path).unwrap());
    let mut entries: Entries = Vec::new();
    let mut meta = None;
    for (k, v) in h {
        if k == "__metadata__" {
            meta = Some(v);
            continue;
        }
        let o = v["data_offsets"].as_array().unwrap();
        let (a, b) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        entries.push((k, v.clone(), data[a..b].to_vec()));
    }
    f(&mut entries);
    let mut header = serde_json::Map::new();
    if let Some(m) = meta {
        header.insert("__metadata__".into(), m);
    }
    let mut out = Vec::new();
    for (k, mut v, d) in entries {
        v["data_offsets"] = serde_json::json!([out.len(), out.len() + d.len()]);
        out.extend(d);
        header.insert(k, v);
    }
    std::fs::write(
        path,
        join_safetensors(&serde_json::to_string(&header).unwrap(), &out),
    )
    .unwrap();
}

/// The bytes of tensor `name` in the safetensors file at `path`.
pub fn tensor_bytes(path: &Path, name: &str) -> Vec<u8> {
    let (h, data) = split_safetensors(&std::fs::read(path).unwrap());
    let o = h[name]["data_offsets"].as_array().unwrap();
    data[o[0].as_u64().unwrap() as usize..o[1].as_u64().unwrap() as usize].to_vec()
}
