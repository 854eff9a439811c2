//! Streaming a large Parquet file of short records (issue #27): peak resident memory and
//! throughput of `stream_dataset` (Parquet decoding, the records' forms, tokenization) over a
//! file far larger than the memory it may use.
//!
//! `cargo bench --bench data_stream` writes a Parquet file of `--size-mb` MiB (1024 by default)
//! of short prompt/completion records (words drawn at random from 4,096 made-up ones, so the
//! file compresses roughly as text does; snappy, 100,000 rows a row group, as pyarrow's defaults roughly
//! give), then reads it in a child process (so the writer's memory is not counted) with the
//! Qwen2.5 tokenizer of `tests/fixtures/tokenizers/`, counting samples and tokens, and prints a
//! table: file size, rows, samples, tokens, seconds, MB/s, rows/s, peak RSS (VmHWM). The goal
//! is a peak RSS under 300 MiB for 1 GB. `--path FILE` keeps the file (written once, reused).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use burn_qlora::tokenizer::Tokenizer;
use burn_qlora::train::{DataOptions, stream_dataset};
use clap::Parser;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

#[allow(dead_code)]
#[path = "../examples/common/mod.rs"]
mod common;

#[derive(Parser, Debug)]
#[command(about = "Peak memory and throughput of streaming a large Parquet data file")]
struct Args {
    /// Size of the Parquet file to write, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mb: u64,
    /// Where to write the file (kept; reused if it is there); a temporary file otherwise.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Internal: read FILE and print the figures (the child process).
    #[arg(long, hide = true)]
    read: Option<PathBuf>,
    #[arg(long, hide = true)]
    bench: bool,
}

/// Syllables of the generated words: 4,096 words of one to three syllables, so that the text
/// compresses about as English does under snappy rather than as a 32-word list would.
const SYLLABLES: [&str; 16] = [
    "ka", "ren", "to", "mi", "sul", "de", "ba", "lor", "ni", "fe", "qu", "ast", "po", "ve", "zi",
    "hu",
];

fn word(k: u64) -> String {
    let n = 1 + (k % 3) as usize;
    (0..n)
        .map(|i| SYLLABLES[((k >> (4 + 4 * i)) & 15) as usize])
        .collect()
}

/// A short record's prompt and completion from a splitmix stream.
fn record(state: &mut u64) -> (String, String) {
    let mut next = || {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut words = |n: u64| -> String {
        let n = 4 + next() % n;
        (0..n)
            .map(|_| word(next() % 4096))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let prompt = format!("Question: {}?", words(16));
    let completion = format!(" {}.", words(12));
    (prompt, completion)
}

fn write(path: &PathBuf, size_mb: u64) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(100_000))
        .set_compression(Compression::SNAPPY)
        .build();
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("prompt", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("completion", arrow_schema::DataType::Utf8, false),
    ]));
    let file = std::fs::File::create(path).expect("create the Parquet file");
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
    let mut state = 7u64;
    let target = size_mb * 1024 * 1024;
    while (w.bytes_written() as u64) < target {
        let (p, c): (Vec<String>, Vec<String>) = (0..10_000).map(|_| record(&mut state)).unzip();
        let batch = RecordBatch::try_from_iter([
            ("prompt", Arc::new(StringArray::from(p)) as ArrayRef),
            ("completion", Arc::new(StringArray::from(c)) as ArrayRef),
        ])
        .unwrap();
        w.write(&batch).expect("write");
        if w.in_progress_size() > 64 << 20 {
            w.flush().expect("flush");
        }
    }
    w.close().expect("close");
}

fn read(path: &PathBuf) {
    let tok_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/qwen2_5");
    let tok = Tokenizer::from_dir(&tok_dir).expect("the fixture tokenizer");
    let opts = DataOptions {
        max_len: 512,
        ..DataOptions::default()
    };
    let t = Instant::now();
    let (mut samples, mut tokens) = (0u64, 0u64);
    let report = stream_dataset(path, &tok, &opts, |s| {
        samples += 1;
        tokens += s.input_ids.len() as u64;
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"rows\": {}, \"samples\": {samples}, \"tokens\": {tokens}, \"seconds\": {secs:.2}, \
         \"peak_rss_mib\": {:.1}}}",
        report.records,
        common::peak_rss_mib()
    );
}

fn main() {
    let args = Args::parse();
    if let Some(p) = &args.read {
        read(p);
        return;
    }
    let (path, temporary) = match &args.path {
        Some(p) => (p.clone(), false),
        None => (
            std::env::temp_dir().join(format!("qlora-stream-{}.parquet", std::process::id())),
            true,
        ),
    };
    if !path.is_file() {
        let t = Instant::now();
        write(&path, args.size_mb);
        eprintln!(
            "wrote {} in {:.0} s",
            path.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let bytes = std::fs::metadata(&path).expect("the file").len();
    let out = Command::new(std::env::current_exe().expect("this program"))
        .arg("--read")
        .arg(&path)
        .output()
        .expect("the reading process");
    if temporary {
        let _ = std::fs::remove_file(&path);
    }
    std::io::stderr().write_all(&out.stderr).unwrap();
    assert!(out.status.success(), "the reading process failed");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the reading process's figures");
    let secs = v["seconds"].as_f64().unwrap();
    let mb = bytes as f64 / 1e6;
    println!("| file | rows | samples | tokens | seconds | MB/s | rows/s | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {:.0} MiB Parquet (snappy) | {} | {} | {} | {secs:.1} | {:.1} | {:.0} | {:.0} MiB |",
        bytes as f64 / (1024.0 * 1024.0),
        v["rows"],
        v["samples"],
        v["tokens"],
        mb / secs,
        v["rows"].as_f64().unwrap() / secs,
        v["peak_rss_mib"].as_f64().unwrap()
    );
}
