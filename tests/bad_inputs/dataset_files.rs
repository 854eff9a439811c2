//! Malformed Parquet and Arrow data files and dataset folders (issue #27): broken files, rows
//! of no form, columns of types no form reads, folders without the split asked for or with
//! their listed files gone.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use burn_qlora::llama::LlamaTokenizer;
use burn_qlora::train::{DataOptions, load_dataset};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::Case;

/// Loads `path` (under the case's folder) with the byte tokenizer, reading `split`.
fn read(dir: &Path, path: &Path, split: Option<&str>) -> Result<(), String> {
    let tok_dir = dir.join("tokenizer");
    crate::byte_tokenizer::write(&tok_dir);
    let tok = LlamaTokenizer::from_dir(&tok_dir).map_err(|e| e.to_string())?;
    let opts = DataOptions {
        max_len: 256,
        split: split.map(str::to_string),
        ..DataOptions::default()
    };
    load_dataset(path, &tok, &opts)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn data_files() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data_files")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Writes `columns` as a Parquet file of row groups of `rows_per_group` rows.
fn parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn strings(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "parquet-truncated",
            &["half.parquet", "not a readable Parquet file"],
            |d| {
                let bytes = std::fs::read(data_files().join("sharegpt.parquet")).unwrap();
                let p = d.join("half.parquet");
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
                read(d, &p, None)
            },
        ),
        Case::new(
            "parquet-holding-json",
            &["fake.parquet", "not a readable Parquet file"],
            |d| {
                let p = d.join("fake.parquet");
                std::fs::write(&p, "{\"text\": \"not parquet\"}\n").unwrap();
                read(d, &p, None)
            },
        ),
        Case::new(
            "parquet-no-form-column",
            &[
                "other.parquet",
                "no column the data forms read",
                "question, answer",
            ],
            |d| {
                let p = d.join("other.parquet");
                parquet(
                    &p,
                    vec![
                        ("question", strings(&[Some("q")])),
                        ("answer", strings(&[Some("a")])),
                    ],
                    10,
                );
                read(d, &p, None)
            },
        ),
        Case::new(
            "parquet-row-of-no-form",
            &["bad.parquet", "row 3 (row group 2 of 2)", "no `messages`"],
            |d| {
                let p = d.join("bad.parquet");
                parquet(
                    &p,
                    vec![
                        (
                            "prompt",
                            strings(&[Some("a"), Some("b"), Some("c"), Some("d")]),
                        ),
                        (
                            "completion",
                            strings(&[Some(" x"), Some(" y"), None, Some(" z")]),
                        ),
                    ],
                    2,
                );
                read(d, &p, None)
            },
        ),
        Case::new(
            "parquet-binary-text",
            &[
                "binary.parquet",
                "row 1",
                "field `text`: a value of Arrow type Binary",
            ],
            |d| {
                let p = d.join("binary.parquet");
                let text: ArrayRef = Arc::new(BinaryArray::from_vec(vec![b"abc"]));
                parquet(&p, vec![("text", text)], 10);
                read(d, &p, None)
            },
        ),
        Case::new(
            "arrow-truncated",
            &["data-00000-of-00001.arrow", "no end-of-stream marker"],
            |d| {
                let saved = d.join("saved");
                copy_dir(&data_files().join("saved"), &saved);
                let p = saved.join("train/data-00000-of-00001.arrow");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
                read(d, &saved, None)
            },
        ),
        Case::new(
            "saved-dataset-file-gone",
            &["state.json", "data-00000-of-00001.arrow, which is missing"],
            |d| {
                let saved = d.join("saved");
                copy_dir(&data_files().join("saved"), &saved);
                std::fs::remove_file(saved.join("validation/data-00000-of-00001.arrow")).unwrap();
                read(d, &saved, Some("validation"))
            },
        ),
        Case::new(
            "saved-dataset-no-such-split",
            &["saved", "no split `test` (its splits: train, validation"],
            |d| read(d, &data_files().join("saved"), Some("test")),
        ),
        Case::new(
            "dataset-dict-not-json",
            &["dataset_dict.json", "not valid JSON"],
            |d| {
                let saved = d.join("saved");
                copy_dir(&data_files().join("saved"), &saved);
                std::fs::write(saved.join("dataset_dict.json"), "{\"splits\": [").unwrap();
                read(d, &saved, None)
            },
        ),
        Case::new(
            "dataset-folder-empty",
            &["empty", "no data file in this folder"],
            |d| {
                let p = d.join("empty");
                std::fs::create_dir_all(&p).unwrap();
                read(d, &p, None)
            },
        ),
        Case::new(
            "split-of-one-file",
            &["sharegpt.parquet", "--split validation", "this is one file"],
            |d| {
                read(
                    d,
                    &data_files().join("sharegpt.parquet"),
                    Some("validation"),
                )
            },
        ),
    ]
}
