//! Data files: chat, alpaca and text records tokenized with the loss on responses only, and
//! malformed input as errors naming the file and line.

use std::path::PathBuf;

use qlora_nn::IGNORE_INDEX;
use qlora_tokenizer::Tokenizer;
use qlora_train::{DataFormat, DataOptions, Overflow, Sample, load_dataset, pack, split};
use serde_json::json;

#[path = "../../../tests/support/byte_tokenizer.rs"]
mod byte_tokenizer;

/// A byte-level BPE tokenizer folder (256 byte tokens, ChatML specials, a ChatML template).
fn tokenizer() -> (Tokenizer, PathBuf) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("qlora-data-tok-{}-{k}", std::process::id()));
    byte_tokenizer::write(&dir);
    (Tokenizer::from_dir(&dir).unwrap(), dir)
}

fn opts(format: DataFormat, max_len: usize) -> DataOptions {
    DataOptions {
        format,
        max_len,
        overflow: Overflow::Error,
        skip_invalid: false,
        ..DataOptions::default()
    }
}

fn write(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("qlora-data-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn chat_loss_covers_the_assistant_turns_only() {
    let (tok, _) = tokenizer();
    let line = json!({"messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"}
    ]});
    let p = write("chat.jsonl", &format!("{line}\n\n"));
    let (s, report) = load_dataset(&p, &tok, &opts(DataFormat::Auto, 512)).unwrap();
    assert_eq!((s.len(), report.records), (1, 1));
    let s = &s[0];
    assert_eq!(s.input_ids.len(), s.labels.len());
    let trained: Vec<u32> = s
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    // The trained text is each reply with its end-of-turn marker, nothing of the prompts.
    assert_eq!(
        tok.decode(&trained, false).unwrap(),
        "hello!<|im_end|>\nsee you<|im_end|>\n"
    );
    let all = tok.decode(&s.input_ids, false).unwrap();
    assert_eq!(
        all,
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello!<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nsee you<|im_end|>\n"
    );
}

#[test]
fn alpaca_and_text_records() {
    let (tok, _) = tokenizer();
    let p = write(
        "mixed.jsonl",
        &[
            json!({"instruction": "Add", "input": "2 and 3", "output": "5"}),
            json!({"instruction": "Say hi", "input": "", "output": "hi"}),
            json!({"text": "plain text is trained everywhere"}),
        ]
        .map(|v| v.to_string())
        .join("\n"),
    );
    let (s, _) = load_dataset(&p, &tok, &opts(DataFormat::Auto, 512)).unwrap();
    let trained = |i: usize| -> String {
        let ids: Vec<u32> = s[i]
            .labels
            .iter()
            .filter(|&&l| l >= 0)
            .map(|&l| l as u32)
            .collect();
        tok.decode(&ids, false).unwrap()
    };
    assert_eq!(trained(0), "5<|im_end|>\n");
    assert!(
        tok.decode(&s[0].input_ids, false)
            .unwrap()
            .contains("Add\n\n2 and 3")
    );
    assert_eq!(trained(1), "hi<|im_end|>\n");
    // Text is trained everywhere, with the eos token TRL appends so the model learns to stop.
    assert_eq!(trained(2), "plain text is trained everywhere<|im_end|>");
    // A .txt file (and its eos) is cut into windows of max_len tokens, all trained.
    let t = write("plain.txt", &"abcdefghij".repeat(10));
    let (w, _) = load_dataset(&t, &tok, &opts(DataFormat::Auto, 32)).unwrap();
    assert_eq!(
        w.iter().map(|s| s.input_ids.len()).collect::<Vec<_>>(),
        [32, 32, 32, 5]
    );
    // Packing joins short samples up to max_len, keeping their lengths.
    let packed = pack(s.clone(), 10_000);
    assert_eq!(packed.len(), 1);
    assert_eq!(
        packed[0].input_ids.len(),
        s.iter().map(|x| x.input_ids.len()).sum::<usize>()
    );
    assert_eq!(packed[0].seq_lengths.len(), s.len());
    // A split is deterministic and disjoint.
    let (a, b) = split(10, 0.2, 5);
    assert_eq!((a.len(), b.len()), (8, 2));
    assert_eq!(split(10, 0.2, 5), (a, b));
}

#[test]
fn malformed_records_name_the_file_and_line() {
    let (tok, _) = tokenizer();
    let good = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}).to_string();
    let cases: Vec<(&str, String, DataFormat, &str)> = vec![
        (
            "broken.jsonl",
            format!("{good}\n{{\"messages\": [\n"),
            DataFormat::Auto,
            ":2: not valid JSON",
        ),
        (
            "unknown.jsonl",
            format!("{good}\n{{\"prompt\": \"x\"}}\n"),
            DataFormat::Auto,
            ":2: no `messages`, `conversations`, `prompt` + `completion`, `instruction` or `text`",
        ),
        (
            "role.jsonl",
            json!({"messages": [{"role": "bot", "content": "x"}]}).to_string(),
            DataFormat::Chat,
            ":1: message 1: role `bot`",
        ),
        (
            "noassistant.jsonl",
            json!({"messages": [{"role": "user", "content": "x"}]}).to_string(),
            DataFormat::Chat,
            "no assistant message",
        ),
        (
            "content.jsonl",
            json!({"messages": [{"role": "user", "content": 5}]}).to_string(),
            DataFormat::Chat,
            "field `content` is not a string",
        ),
        (
            "alpaca.jsonl",
            json!({"instruction": "x"}).to_string(),
            DataFormat::Alpaca,
            "missing field `output`",
        ),
        (
            "emptytext.jsonl",
            json!({"text": "  "}).to_string(),
            DataFormat::Text,
            "field `text` is empty",
        ),
        (
            "array.json",
            "[1, 2".into(),
            DataFormat::Auto,
            "not valid JSON",
        ),
        (
            "notobject.jsonl",
            "[1]".into(),
            DataFormat::Auto,
            "expected a JSON object",
        ),
    ];
    for (name, text, format, want) in cases {
        let p = write(name, &text);
        let e = load_dataset(&p, &tok, &opts(format, 512))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    // Too long for max_len: an error unless truncation is asked for.
    let long = json!({"messages": [{"role": "user", "content": "x".repeat(50)}, {"role": "assistant", "content": "y".repeat(50)}]}).to_string();
    let p = write("long.jsonl", &long);
    let e = load_dataset(&p, &tok, &opts(DataFormat::Auto, 64))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":1:") && e.contains("exceed the maximum length 64"),
        "{e}"
    );
    let mut o = opts(DataFormat::Auto, 80);
    o.overflow = Overflow::Truncate;
    let (s, r) = load_dataset(&p, &tok, &o).unwrap();
    assert_eq!((s[0].input_ids.len(), r.truncated), (80, 1));
    // Skipping: bad lines counted, good ones kept; nothing usable at all is an error.
    let p = write("skip.jsonl", &format!("{good}\nnot json\n{good}\n"));
    let mut o = opts(DataFormat::Auto, 512);
    o.skip_invalid = true;
    let (s, r) = load_dataset(&p, &tok, &o).unwrap();
    assert_eq!((s.len(), r.skipped), (2, 1));
    let p = write("empty.jsonl", "\n\n");
    let e = load_dataset(&p, &tok, &opts(DataFormat::Auto, 512))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("empty.jsonl") && e.contains("no usable sample"),
        "{e}"
    );
    let e = load_dataset(
        std::path::Path::new("/nonexistent/x.jsonl"),
        &tok,
        &opts(DataFormat::Auto, 512),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/x.jsonl"), "{e}");
}

/// Best-Fit-Decreasing packing (TRL's `bfd`): longest first, each sample into the fullest bin
/// it fits; the packed samples come back whole, with their labels, and count the same trained
/// tokens.
#[test]
fn bfd_packing_fills_the_fullest_bin_and_keeps_samples_whole() {
    let lengths = [5, 9, 3, 7, 2, 6];
    let samples: Vec<Sample> = lengths
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let ids: Vec<u32> = (0..n as u32).map(|i| 100 * k as u32 + i).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i % 2 == 0 { IGNORE_INDEX } else { t as i64 })
                .collect();
            Sample::new(ids, labels)
        })
        .collect();
    let bins = pack(samples.clone(), 10);
    // 9 | 7 + 3 | 6 + 2 | 5, in the order the bins were opened.
    let shape: Vec<Vec<usize>> = bins
        .iter()
        .map(|b| b.sequences().iter().map(|(i, _)| i.len()).collect())
        .collect();
    assert_eq!(shape, [vec![9], vec![7, 3], vec![6, 2], vec![5]]);
    assert!(
        bins[0].seq_lengths.is_empty(),
        "a bin of one sample is a plain sample"
    );
    let mut back: Vec<Sample> = bins
        .iter()
        .flat_map(|b| b.sequences())
        .map(|(i, l)| Sample::new(i.to_vec(), l.to_vec()))
        .collect();
    back.sort_by_key(|s| s.input_ids[0]);
    assert_eq!(back, samples);
    let count = |v: &[Sample]| v.iter().map(Sample::trained_tokens).sum::<usize>();
    assert_eq!(count(&bins), count(&samples));
    // Packing packed samples again repacks their samples.
    assert_eq!(pack(bins.clone(), 10), bins);
}
