//! Data files into samples: `.jsonl`, `.json` arrays and `.txt`, each also gzip-compressed
//! (`.jsonl.gz`, `.json.gz`, `.txt.gz`, as the hub and `datasets` export them).

use std::path::Path;

use qlora_tokenizer::Tokenizer;
use serde_json::Value;

use super::forms::record_sample;
use super::tokenize::with_eos;
use super::{DataFormat, DataOptions, LoadReport, Overflow, Sample};
use crate::TrainError;

/// Reads and tokenizes a data file (`.jsonl`, `.json` array, or `.txt`; `.gz` of each).
pub fn load_dataset(
    path: impl AsRef<Path>,
    tok: &Tokenizer,
    opts: &DataOptions,
) -> Result<(Vec<Sample>, LoadReport), TrainError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    if opts.max_len < 2 {
        return Err(TrainError::Setting {
            name: "seq-len".into(),
            problem: format!("{} is too short (at least 2 tokens)", opts.max_len),
        });
    }
    let bytes = read_bytes(path)?;
    // A UTF-8 byte-order mark (as editors on Windows write them) is not part of the text.
    let mut bytes = bytes;
    if bytes.starts_with("\u{feff}".as_bytes()) {
        bytes.drain(..3);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        TrainError::Data {
            path: path.display().to_string(),
            line: 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count(),
            problem: format!("not valid UTF-8 (byte {at} of the file's text)"),
        }
    })?;
    let mut report = LoadReport::default();
    let mut samples = Vec::new();
    let is_txt = inner_name(path).ends_with(".txt");
    if is_txt || (opts.format == DataFormat::Text && !text.trim_start().starts_with('{')) {
        let ids = tok.encode(&with_eos(tok, &text), true)?;
        for w in ids.chunks(opts.max_len) {
            if w.len() >= 2 {
                samples.push(Sample::new(
                    w.to_vec(),
                    w.iter().map(|&t| t as i64).collect(),
                ));
            }
        }
        report.records = 1;
        report.forms.insert(DataFormat::Text, 1);
    } else {
        let records: Vec<(usize, Result<Value, String>)> = if text.trim_start().starts_with('[') {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(a)) => a
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i + 1, Ok(v)))
                    .collect(),
                Ok(_) => unreachable!("starts with ["),
                Err(e) => {
                    return Err(TrainError::Data {
                        path: name,
                        line: e.line(),
                        problem: format!("not valid JSON: {e}"),
                    });
                }
            }
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    (
                        i + 1,
                        serde_json::from_str::<Value>(l)
                            .map_err(|e| format!("not valid JSON: {e}")),
                    )
                })
                .collect()
        };
        for (line, v) in records {
            report.records += 1;
            let result = v.and_then(|v| {
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
                            report.truncated += 1;
                        }
                    }
                }
                if s.trained_tokens() == 0 {
                    return Err("no response token left to train on".into());
                }
                Ok((s, form))
            });
            match result {
                Ok((s, form)) => {
                    *report.forms.entry(form).or_default() += 1;
                    samples.push(s);
                }
                Err(_) if opts.skip_invalid => report.skipped += 1,
                Err(problem) => {
                    return Err(TrainError::Data {
                        path: name,
                        line,
                        problem,
                    });
                }
            }
        }
    }
    if samples.is_empty() {
        return Err(TrainError::Dataset {
            path: name,
            problem: format!(
                "no usable sample ({} records, {} skipped)",
                report.records, report.skipped
            ),
        });
    }
    Ok((samples, report))
}

/// The file's name without a `.gz` suffix.
fn inner_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".gz").map(str::to_string).unwrap_or(name)
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
