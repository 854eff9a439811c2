//! Data files and dataset folders into samples: `.jsonl`, `.json` arrays and `.txt` (each also
//! gzip-compressed, as the hub and `datasets` export them), `.parquet`, `datasets`' `.arrow`
//! files, and folders of them (`files.rs` picks a split's files).

use std::path::Path;

use qlora_tokenizer::Tokenizer;
use serde_json::Value;

use super::files::{Kind, data_files, kind};
use super::forms::{FORM_FIELDS, record_sample};
use super::sources::{At, arrow_records, json_records, parquet_records};
use super::tokenize::with_eos;
use super::{DataFormat, DataOptions, LoadReport, Overflow, Sample};
use crate::TrainError;

/// Reads and tokenizes a data file or dataset folder (see [`stream_dataset`]), all samples in
/// memory.
pub fn load_dataset(
    path: impl AsRef<Path>,
    tok: &Tokenizer,
    opts: &DataOptions,
) -> Result<(Vec<Sample>, LoadReport), TrainError> {
    let mut samples = Vec::new();
    let report = stream_dataset(path, tok, opts, |s| samples.push(s))?;
    Ok((samples, report))
}

/// Reads and tokenizes a data file or a dataset folder's split (`opts.split`), handing each
/// sample to `each` as it is made: a `.jsonl`/`.json` array/`.txt` file (each maybe `.gz`), a
/// `.parquet` file (streamed by row group, only the columns the forms read), a `.arrow` file of
/// `datasets`, or a folder of them as `datasets.save_to_disk` or the hub lays it out. Parquet
/// and Arrow files stream: memory holds a batch of rows at a time, whatever the file's size.
///
/// Errors name the file and the line (or row and row group) and the field of a bad record;
/// with `opts.skip_invalid` bad records are counted in the report instead.
pub fn stream_dataset(
    path: impl AsRef<Path>,
    tok: &Tokenizer,
    opts: &DataOptions,
    mut each: impl FnMut(Sample),
) -> Result<LoadReport, TrainError> {
    let path = path.as_ref();
    if opts.max_len < 2 {
        return Err(TrainError::Setting {
            name: "seq-len".into(),
            problem: format!("{} is too short (at least 2 tokens)", opts.max_len),
        });
    }
    let files = data_files(path, opts.split.as_deref())?;
    let mut report = LoadReport {
        files: files.len(),
        ..LoadReport::default()
    };
    let mut kept = 0;
    // The columns a Parquet or Arrow file is read for: the forms' fields and the names
    // `--columns` maps onto them.
    let wanted = |name: &str| {
        FORM_FIELDS.contains(&name) || opts.columns.iter().any(|(_, theirs)| theirs == name)
    };
    for file in &files {
        let mut sink = |at: At, v: Result<Value, String>| -> Result<(), TrainError> {
            report.records += 1;
            match v.and_then(|v| sample_of(tok, v, opts, &mut report.truncated)) {
                Ok((s, form)) => {
                    *report.forms.entry(form).or_default() += 1;
                    kept += 1;
                    each(s);
                    Ok(())
                }
                Err(_) if opts.skip_invalid => {
                    report.skipped += 1;
                    Ok(())
                }
                Err(problem) => Err(at.error(file, problem)),
            }
        };
        match kind(file) {
            Kind::Parquet => parquet_records(file, &wanted, &mut sink)?,
            Kind::Arrow => arrow_records(file, &wanted, &mut sink)?,
            Kind::Text => {
                let text = read_text(file)?;
                kept += text_windows(tok, &text, opts.max_len, &mut each)?;
                report.records += 1;
                *report.forms.entry(DataFormat::Text).or_default() += 1;
            }
            Kind::Json => {
                let text = read_text(file)?;
                if opts.format == DataFormat::Text && !text.trim_start().starts_with('{') {
                    kept += text_windows(tok, &text, opts.max_len, &mut each)?;
                    report.records += 1;
                    *report.forms.entry(DataFormat::Text).or_default() += 1;
                } else {
                    json_records(file, &text, &mut sink)?;
                }
            }
        }
    }
    if kept == 0 {
        return Err(TrainError::Dataset {
            path: path.display().to_string(),
            problem: format!(
                "no usable sample ({} records, {} skipped)",
                report.records, report.skipped
            ),
        });
    }
    Ok(report)
}

/// A plain text cut into windows of `max_len` tokens (the eos appended, as TRL does); how many.
fn text_windows(
    tok: &Tokenizer,
    text: &str,
    max_len: usize,
    each: &mut impl FnMut(Sample),
) -> Result<usize, TrainError> {
    let ids = tok.encode(&with_eos(tok, text), true)?;
    let mut n = 0;
    for w in ids.chunks(max_len) {
        if w.len() >= 2 {
            each(Sample::new(
                w.to_vec(),
                w.iter().map(|&t| t as i64).collect(),
            ));
            n += 1;
        }
    }
    Ok(n)
}

/// One record's sample and form, cut to `opts.max_len` where allowed (counted in `truncated`).
fn sample_of(
    tok: &Tokenizer,
    v: Value,
    opts: &DataOptions,
    truncated: &mut usize,
) -> Result<(Sample, DataFormat), String> {
    let (mut s, form) = record_sample(tok, v, opts)?;
    if s.input_ids.len() > opts.max_len {
        match opts.overflow {
            Overflow::Error => {
                return Err(format!(
                    "{} tokens exceed the maximum length {} (raise --seq-len or allow truncation)",
                    s.input_ids.len(),
                    opts.max_len
                ));
            }
            Overflow::Truncate => {
                let n = s.input_ids.len();
                s.input_ids.truncate(opts.max_len);
                s.labels.truncate(opts.max_len);
                if s.trained_tokens() == 0 {
                    return Err(format!(
                        "no response token left to train on once its {n} tokens are \
                         cut to --seq-len {} (the prompt fills it)",
                        opts.max_len
                    ));
                }
                *truncated += 1;
            }
        }
    }
    if s.trained_tokens() == 0 {
        return Err("no response token left to train on".into());
    }
    Ok((s, form))
}

/// A text file's contents: decompressed where gzip, without a UTF-8 byte-order mark (as editors
/// on Windows write them), checked to be UTF-8.
fn read_text(path: &Path) -> Result<String, TrainError> {
    let mut bytes = read_bytes(path)?;
    if bytes.starts_with("\u{feff}".as_bytes()) {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        TrainError::Data {
            path: path.display().to_string(),
            line: 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count(),
            problem: format!("not valid UTF-8 (byte {at} of the file's text)"),
        }
    })
}

/// The file's bytes, decompressed where its name ends in `.gz` or it starts with gzip's magic
/// bytes (a compressed file named `.jsonl`).
fn read_bytes(path: &Path) -> Result<Vec<u8>, TrainError> {
    let raw = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let named = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    if !named && !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&raw[..]), &mut out)
        .map_err(|e| TrainError::Dataset {
            path: path.display().to_string(),
            problem: format!("not a readable gzip file: {e}"),
        })?;
    Ok(out)
}
