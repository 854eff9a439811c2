//! Mutation fuzzing of the file readers: good files with random bytes flipped, ranges cut out,
//! junk inserted, or a length field set to a huge value, read by the same entry points users
//! call. A reader may accept a mutated file (a flipped weight byte is still a model) or refuse
//! it with an error; it must never panic. The run is seeded and bounded (a count per reader and
//! a time limit), so a failure reproduces with its seed and iteration.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use burn_qlora::llama::{GgufFile, LlamaTokenizer};
use burn_qlora::nn::{LoraConfig, PeftAdapter};
use burn_qlora::train::{DataFormat, DataOptions, Overflow, load_dataset};

use crate::{copy_fixture, fixture, load_model};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `good`; positions favour the first `hot` bytes (the header).
fn mutate(good: &[u8], hot: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = good.to_vec();
    let span = if rng.below(4) < 3 {
        hot.min(b.len())
    } else {
        b.len()
    };
    let at = rng.below(span);
    match rng.below(6) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => b[at] = rng.next() as u8,
        2 => b.truncate(at),
        3 => {
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            b.splice(at..at, junk);
        }
        4 => {
            let end = (at + 1 + rng.below(32)).min(b.len());
            b.drain(at..end);
        }
        _ => {
            // A little-endian u64 length or count field set to something huge.
            let v = [u64::MAX, 1 << 62, 1 << 40, u32::MAX as u64][rng.below(4)];
            let end = (at + 8).min(b.len());
            let bytes = v.to_le_bytes();
            b[at..end].copy_from_slice(&bytes[..end - at]);
        }
    }
    b
}

type Reader = Box<dyn Fn(&Path, &[u8]) -> Result<(), String>>;

/// A reader of one kind of file: where the good bytes come from and how the file is read.
struct Target {
    name: &'static str,
    good: Vec<u8>,
    hot: usize,
    read: Reader,
}

fn safetensors_header_len(b: &[u8]) -> usize {
    8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

fn targets(dir: &Path) -> Vec<Target> {
    let f32_model = dir.join("f32-model");
    let nf4_model = dir.join("nf4-model");
    let adapter = dir.join("adapter");
    let tok = dir.join("tok");
    for (d, src) in [
        (&f32_model, "tiny-llama"),
        (&nf4_model, "tiny-llama-nf4"),
        (&adapter, "tiny-llama-lora"),
    ] {
        std::fs::create_dir_all(d).unwrap();
        copy_fixture(src, d);
    }
    crate::byte_tokenizer::write(&tok);
    let read_file = |p: &Path| std::fs::read(p).unwrap();
    let st = |p: &Path| {
        let b = std::fs::read(p).unwrap();
        let h = safetensors_header_len(&b);
        (b, h)
    };
    let (f32_bytes, f32_hot) = st(&fixture("tiny-llama/model.safetensors"));
    let (nf4_bytes, nf4_hot) = st(&fixture("tiny-llama-nf4/model.safetensors"));
    let (ad_bytes, ad_hot) = st(&fixture("tiny-llama-lora/adapter_model.safetensors"));
    let jsonl: Vec<u8> = (0..6)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": format!("question {i}")},
                {"role": "assistant", "content": format!("answer {i}")}]})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    let (mf, mn, ma, tk) = (
        f32_model.clone(),
        nf4_model.clone(),
        adapter.clone(),
        tok.clone(),
    );
    vec![
        Target {
            name: "model.safetensors (f32)",
            good: f32_bytes,
            hot: f32_hot,
            read: Box::new(move |_, b| {
                std::fs::write(mf.join("model.safetensors"), b).unwrap();
                load_model(&mf)
            }),
        },
        Target {
            name: "model.safetensors (bnb-4bit)",
            good: nf4_bytes,
            hot: nf4_hot,
            read: Box::new(move |_, b| {
                std::fs::write(mn.join("model.safetensors"), b).unwrap();
                load_model(&mn)
            }),
        },
        Target {
            name: "config.json",
            good: read_file(&fixture("tiny-llama/config.json")),
            hot: usize::MAX,
            read: Box::new(move |d, b| {
                let m = d.join("cfg-model");
                std::fs::create_dir_all(&m).unwrap();
                if !m.join("model.safetensors").exists() {
                    copy_fixture("tiny-llama", &m);
                }
                std::fs::write(m.join("config.json"), b).unwrap();
                load_model(&m)
            }),
        },
        Target {
            name: "adapter_model.safetensors",
            good: ad_bytes,
            hot: ad_hot,
            read: Box::new(move |_, b| {
                std::fs::write(ma.join("adapter_model.safetensors"), b).unwrap();
                PeftAdapter::load(&ma, &Device::flex())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        Target {
            name: "adapter_config.json",
            good: read_file(&fixture("tiny-llama-lora/adapter_config.json")),
            hot: usize::MAX,
            read: Box::new(|_, b| {
                LoraConfig::from_json_bytes(b, "adapter_config.json")
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        Target {
            name: "model.gguf",
            good: crate::gguf_files::good_gguf("llama"),
            hot: 400,
            read: Box::new(|d, b| {
                let p = d.join("fuzz.gguf");
                std::fs::write(&p, b).unwrap();
                GgufFile::open(&p).map(|_| ()).map_err(|e| e.to_string())?;
                load_model(&p)
            }),
        },
        Target {
            name: "train.jsonl",
            good: jsonl,
            hot: usize::MAX,
            read: Box::new(move |d, b| {
                let tok = LlamaTokenizer::from_dir(&tk).map_err(|e| e.to_string())?;
                let p = d.join("fuzz.jsonl");
                std::fs::write(&p, b).unwrap();
                let opts = DataOptions {
                    format: DataFormat::Auto,
                    max_len: 128,
                    overflow: Overflow::Truncate,
                    skip_invalid: false,
                    ..DataOptions::default()
                };
                load_dataset(&p, &tok, &opts)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        Target {
            name: "tokenizer_config.json",
            good: std::fs::read(tok.join("tokenizer_config.json")).unwrap(),
            hot: usize::MAX,
            read: Box::new(move |d, b| {
                let t = d.join("fuzz-tok");
                if !t.exists() {
                    crate::byte_tokenizer::write(&t);
                }
                std::fs::write(t.join("tokenizer_config.json"), b).unwrap();
                LlamaTokenizer::from_dir(&t)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
    ]
}

/// Mutations per reader, and the time after which each reader stops early.
const ITERATIONS: usize = 1000;
const TIME_PER_TARGET: Duration = Duration::from_secs(6);

#[test]
fn mutated_files_never_panic_a_reader() {
    let dir = std::env::temp_dir().join(format!("qlora-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for (t_index, t) in targets(&dir).into_iter().enumerate() {
        let seed = 0x5eed_0000 + t_index as u64;
        let mut rng = Rng(seed);
        let started = Instant::now();
        let (mut runs, mut refused) = (0, 0);
        while runs < ITERATIONS && started.elapsed() < TIME_PER_TARGET {
            let bytes = mutate(&t.good, t.hot, &mut rng);
            match catch_unwind(AssertUnwindSafe(|| (t.read)(&dir, &bytes))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    refused += 1;
                    if e.trim().is_empty() {
                        failures.push(format!(
                            "{} (seed {seed:#x}, run {runs}): empty error",
                            t.name
                        ));
                    }
                }
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!(
                        "{} (seed {seed:#x}, run {runs}): PANIC {msg}",
                        t.name
                    ));
                }
            }
            runs += 1;
        }
        counts.push(format!("{}: {runs} mutations, {refused} refused", t.name));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("fuzz: {}", counts.join("; "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
