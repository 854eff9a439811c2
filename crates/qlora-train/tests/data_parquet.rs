//! Parquet files and dataset folders (issue #27): files written by the Python stack
//! (`tests/fixtures/data_files/`, made by `tests/fixtures/scripts/make_data_files.py` with
//! `datasets` and `pyarrow`) and files written here with the same Arrow crates give TRL's token
//! ids and trained tokens (`forms.json`) for the records they hold, on six family tokenizers;
//! folders in the hub's and `save_to_disk`'s layouts give the split asked for; bad rows are named
//! by file, row, row group and field.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch};
use common::{FAMILIES, cases, check_against_trl, fixtures, tokenizer};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use qlora_train::{DataFormat, DataOptions, Overflow, Sample, load_dataset, stream_dataset};
use serde_json::{Value, json};

fn options() -> DataOptions {
    DataOptions {
        max_len: 4096,
        overflow: Overflow::Error,
        ..DataOptions::default()
    }
}

/// The records of `form` in the order `make_data_files.py` wrote them (those of qwen2_5's
/// cases, which hold every record).
fn records(form: &str) -> Vec<Value> {
    cases("qwen2_5")
        .into_iter()
        .filter(|c| c["form"] == form)
        .map(|c| c["record"].clone())
        .collect()
}

fn load(path: &Path, family: &str, split: Option<&str>) -> Vec<Sample> {
    let (tok, _) = tokenizer(family);
    let opts = DataOptions {
        split: split.map(str::to_string),
        ..options()
    };
    load_dataset(path, &tok, &opts)
        .unwrap_or_else(|e| panic!("{family}: {}: {e}", path.display()))
        .0
}

#[test]
fn files_and_folders_written_by_datasets_and_pyarrow_give_trls_tokens() {
    let data = fixtures("data_files");
    let pc = records("prompt-completion");
    let cs = records("chat-system");
    let sg = records("sharegpt");
    let mixed: Vec<Value> = cs.iter().chain(&pc).cloned().collect();
    let read: [(&str, Option<&str>, Vec<Value>); 8] = [
        ("sharegpt.parquet", None, sg.clone()),
        (
            "prompt_completion_chat.parquet",
            None,
            records("prompt-completion-chat"),
        ),
        ("mixed.parquet", None, mixed),
        ("hub", None, pc.clone()),
        ("hub", Some("test"), sg),
        ("saved", None, pc.clone()),
        ("saved", Some("train"), pc),
        ("saved", Some("validation"), cs),
    ];
    let (mut checked, mut masks) = (0, 0);
    for family in FAMILIES {
        for (name, split, want) in &read {
            let what = format!("{family}: {name} (split {split:?})");
            let (tok, _) = tokenizer(family);
            let opts = DataOptions {
                split: split.map(str::to_string),
                ..options()
            };
            match load_dataset(data.join(name), &tok, &opts) {
                Ok((got, _)) => {
                    let m = check_against_trl(family, want, &got, &what)
                        .unwrap_or_else(|| panic!("{what}: read, yet TRL has no case"));
                    masks += m;
                    checked += 1;
                }
                // Mistral-Instruct v0.1's template refuses a system turn: its roles must
                // alternate from the user's.
                Err(e) => assert!(
                    family == "mistral" && e.to_string().contains("roles must alternate"),
                    "{what}: {e}"
                ),
            }
        }
    }
    assert!(checked >= 43, "only {checked} files compared");
    assert!(masks >= 60, "only {masks} masks compared");
}

/// Writes `records` as Parquet with the Arrow crates (schema inferred as `arrow-json` infers
/// it), `rows_per_group` rows in each row group.
fn write_parquet(path: &Path, records: &[Value], rows_per_group: usize, compression: Compression) {
    let schema =
        arrow_json::reader::infer_json_schema_from_iterator(records.iter().map(Ok)).unwrap();
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema))
        .build_decoder()
        .unwrap();
    decoder.serialize(records).unwrap();
    let batch = decoder.flush().unwrap().unwrap();
    write_batch(path, &batch, rows_per_group, compression);
}

fn write_batch(path: &Path, batch: &RecordBatch, rows_per_group: usize, compression: Compression) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_compression(compression)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-parquet-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn parquet_written_with_the_arrow_crates_gives_the_jsonl_files_samples() {
    let compressions = [
        Compression::SNAPPY,
        Compression::ZSTD(ZstdLevel::default()),
        Compression::UNCOMPRESSED,
        Compression::LZ4_RAW,
    ];
    let mut masks = 0;
    for family in FAMILIES {
        let (tok, _) = tokenizer(family);
        for (k, form) in [
            "sharegpt",
            "chat-system",
            "prompt-completion",
            "prompt-completion-chat",
        ]
        .into_iter()
        .enumerate()
        {
            let recs: Vec<Value> = cases(family)
                .into_iter()
                .filter(|c| c["form"] == form)
                .map(|c| c["record"].clone())
                .collect();
            if recs.is_empty() {
                continue;
            }
            let p = tmp(&format!("{family}-{form}.parquet"));
            write_parquet(&p, &recs, 1, compressions[k]);
            let (got, report) = load_dataset(&p, &tok, &options()).unwrap();
            masks += check_against_trl(family, &recs, &got, &format!("{family} {form}")).unwrap();
            assert_eq!(report.records, recs.len());
            // The JSONL file of the same records gives the same samples.
            let j = tmp(&format!("{family}-{form}.jsonl"));
            let text: String = recs.iter().map(|r| format!("{r}\n")).collect();
            std::fs::write(&j, text).unwrap();
            let (from_jsonl, jsonl_report) = load_dataset(&j, &tok, &options()).unwrap();
            assert_eq!(got, from_jsonl, "{family} {form}");
            assert_eq!(report.forms, jsonl_report.forms, "{family} {form}");
        }
    }
    assert!(masks >= 25, "only {masks} masks compared");
}

#[test]
fn streaming_hands_on_the_samples_loading_collects_and_reads_only_the_form_columns() {
    let (tok, _) = tokenizer("qwen2_5");
    // Many rows over several row groups and batches, with a binary column (an image, say)
    // that no form reads: it is not decoded, so it is no error.
    let recs: Vec<Value> = (0..1500)
        .map(|i| json!({"prompt": format!("Q{i}: what comes after {i}?"), "completion": format!(" {}", i + 1)}))
        .collect();
    let schema = arrow_json::reader::infer_json_schema_from_iterator(recs.iter().map(Ok)).unwrap();
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema))
        .build_decoder()
        .unwrap();
    decoder.serialize(&recs).unwrap();
    let batch = decoder.flush().unwrap().unwrap();
    let image: ArrayRef = Arc::new(BinaryArray::from_iter_values(
        (0..recs.len()).map(|i| vec![0u8, 1, 2, i as u8]),
    ));
    let mut columns: Vec<(String, ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect();
    columns.insert(0, ("image".into(), image));
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let p = tmp("many.parquet");
    write_batch(&p, &batch, 400, Compression::SNAPPY);
    let (all, report) = load_dataset(&p, &tok, &options()).unwrap();
    assert_eq!(all.len(), 1500);
    assert_eq!(
        report.forms.into_iter().collect::<Vec<_>>(),
        [(DataFormat::PromptCompletion, 1500)]
    );
    let mut streamed = Vec::new();
    let stream_report = stream_dataset(&p, &tok, &options(), |s| streamed.push(s)).unwrap();
    assert_eq!(streamed, all);
    assert_eq!(stream_report.records, 1500);
    // Row 1234 is in the fourth row group of 400 rows.
    let j = tmp("many.jsonl");
    std::fs::write(&j, format!("{}\n", recs[1233])).unwrap();
    assert_eq!(load_dataset(&j, &tok, &options()).unwrap().0[0], all[1233]);
}

#[test]
fn a_bad_row_is_named_by_file_row_row_group_and_field() {
    let (tok, _) = tokenizer("qwen2_5");
    let mut recs: Vec<Value> = (0..6)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("q{i}")},
                                     {"role": "assistant", "content": "a"}]})
        })
        .collect();
    recs[4]["messages"][1]["role"] = json!("robot");
    let p = tmp("bad-row.parquet");
    write_parquet(&p, &recs, 2, Compression::SNAPPY);
    let e = load_dataset(&p, &tok, &options()).unwrap_err().to_string();
    assert!(
        e.contains("bad-row.parquet: row 5 (row group 3 of 3):") && e.contains("robot"),
        "{e}"
    );
    // --skip-invalid counts it and reads the rest.
    let skip = DataOptions {
        skip_invalid: true,
        ..options()
    };
    let (s, report) = load_dataset(&p, &tok, &skip).unwrap();
    assert_eq!((s.len(), report.skipped), (5, 1));
    // A file with no column a form reads says which columns it has.
    let p = tmp("other.parquet");
    write_parquet(
        &p,
        &[json!({"question": "q", "answer": "a"})],
        10,
        Compression::SNAPPY,
    );
    let e = load_dataset(&p, &tok, &options()).unwrap_err().to_string();
    assert!(
        e.contains("its columns: question, answer; --columns maps"),
        "{e}"
    );
    // ...which --columns maps.
    let mapped = DataOptions {
        columns: vec![
            ("prompt".into(), "question".into()),
            ("completion".into(), "answer".into()),
        ],
        ..options()
    };
    assert_eq!(load_dataset(&p, &tok, &mapped).unwrap().0.len(), 1);
}

#[test]
fn splits_are_chosen_by_name_and_a_missing_one_lists_those_there() {
    let data = fixtures("data_files");
    let (tok, _) = tokenizer("qwen2_5");
    let with = |split: &str| DataOptions {
        split: Some(split.into()),
        ..options()
    };
    let e = load_dataset(data.join("saved"), &tok, &with("test"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no split `test` (its splits: train, validation; --split chooses)"),
        "{e}"
    );
    let e = load_dataset(data.join("hub"), &tok, &with("validation"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no file of split `validation` (the splits its files name: test, train"),
        "{e}"
    );
    let e = load_dataset(data.join("sharegpt.parquet"), &tok, &with("train"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("this is one file"), "{e}");
    // A folder of files naming no split is all `train`; `dev` files are `validation`.
    let d = tmp("plain-folder");
    std::fs::create_dir_all(d.join("nested")).unwrap();
    let line = |q: &str| format!("{}\n", json!({"prompt": q, "completion": " a"}));
    std::fs::write(d.join("a.jsonl"), line("one")).unwrap();
    std::fs::write(d.join("nested/b.jsonl"), line("two")).unwrap();
    std::fs::write(d.join("dataset_info.json"), "{}").unwrap();
    assert_eq!(load(&d, "qwen2_5", None).len(), 2);
    std::fs::write(d.join("dev.jsonl"), line("three")).unwrap();
    assert_eq!(load(&d, "qwen2_5", Some("validation")).len(), 1);
    let e = load_dataset(&d, &tok, &options()).unwrap_err().to_string();
    assert!(
        e.contains("no file of split `train` (the splits its files name: validation"),
        "{e}"
    );
    // The hub folder's report counts its files.
    let (_, report) = load_dataset(data.join("hub"), &tok, &options()).unwrap();
    assert_eq!((report.files, report.records), (2, 2));
}

#[test]
fn folders_resolve_splits_in_datasets_order() {
    let (tok, _) = tokenizer("qwen2_5");
    let line = |q: &str| format!("{}\n", json!({"prompt": q, "completion": " a"}));
    let count = |d: &Path, split: Option<&str>| -> Result<usize, String> {
        let opts = DataOptions {
            split: split.map(str::to_string),
            ..options()
        };
        load_dataset(d, &tok, &opts)
            .map(|(s, _)| s.len())
            .map_err(|e| e.to_string())
    };
    // Shards name any split (ultrachat's `train_sft`); then only they count.
    let d = tmp("sharded");
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::write(
        d.join("data/train_sft-00000-of-00001.jsonl"),
        line("1") + &line("2"),
    )
    .unwrap();
    std::fs::write(d.join("data/test_sft-00000-of-00001.jsonl"), line("3")).unwrap();
    assert_eq!(count(&d, Some("train_sft")), Ok(2));
    assert_eq!(count(&d, Some("test_sft")), Ok(1));
    let e = count(&d, None).unwrap_err();
    assert!(
        e.contains("no file of split `train` (the splits its files name: test_sft, train_sft"),
        "{e}"
    );
    assert!(
        count(&d, Some("data")).is_err(),
        "a folder's name is no split"
    );
    // Folder names before file names: `test/data/train.jsonl` is test data.
    let d = tmp("by-folder");
    std::fs::create_dir_all(d.join("test/data")).unwrap();
    std::fs::create_dir_all(d.join("training")).unwrap();
    std::fs::write(d.join("test/data/train.jsonl"), line("t")).unwrap();
    std::fs::write(d.join("training/a.jsonl"), line("1") + &line("2")).unwrap();
    assert_eq!(count(&d, None), Ok(2));
    assert_eq!(count(&d, Some("test")), Ok(1));
    // One format: the most common kind; a licence beside the data is not trained on.
    let d = tmp("one-format");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a.jsonl"), line("1")).unwrap();
    std::fs::write(d.join("b.jsonl"), line("2")).unwrap();
    std::fs::write(d.join("LICENSE.txt"), "Permission is hereby granted").unwrap();
    std::fs::write(d.join("config.json"), "{}").unwrap();
    assert_eq!(count(&d, None), Ok(2));
    // A link loop does not repeat files.
    #[cfg(unix)]
    {
        let _ = std::os::unix::fs::symlink(&d, d.join("loop"));
        assert_eq!(count(&d, None), Ok(2));
    }
}
