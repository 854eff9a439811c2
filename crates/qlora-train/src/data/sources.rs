//! The records of one data file, handed one at a time to a sink with where they stand in the
//! file: JSONL lines and JSON array items, Parquet rows (streamed by row group and page, only
//! the columns the forms read), and rows of Arrow IPC files as `datasets.save_to_disk` writes
//! them (`data-00000-of-00001.arrow`, a stream of record batches).
//!
//! Parquet and Arrow files are never held whole in memory: a batch of rows is decoded, its
//! records handed on, and dropped, so a file far larger than memory streams through.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::arrow_rows::row_value;
use crate::TrainError;

/// Rows decoded at a time.
const BATCH_ROWS: usize = 512;

/// Where a record stands in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum At {
    /// A 1-based line of a JSONL file, or item of a JSON array.
    Line(usize),
    /// A 1-based row of a Parquet or Arrow file, with its row group and their count (Parquet).
    Row {
        row: usize,
        group: Option<(usize, usize)>,
    },
}

impl At {
    /// The error for a bad record here.
    pub(super) fn error(self, path: &Path, problem: String) -> TrainError {
        let path = path.display().to_string();
        match self {
            At::Line(line) => TrainError::Data {
                path,
                line,
                problem,
            },
            At::Row { row, group } => TrainError::DataRow {
                path,
                row,
                row_group: group,
                problem,
            },
        }
    }
}

/// What takes the records: the record (or why it is not one) at its place; an error stops the
/// file.
pub(super) type Sink<'a> = dyn FnMut(At, Result<Value, String>) -> Result<(), TrainError> + 'a;

/// The records of a JSON array or JSONL text.
pub(super) fn json_records(path: &Path, text: &str, sink: &mut Sink) -> Result<(), TrainError> {
    if text.trim_start().starts_with('[') {
        let items = match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(a)) => a,
            Ok(_) => unreachable!("starts with ["),
            Err(e) => {
                return Err(At::Line(e.line()).error(path, format!("not valid JSON: {e}")));
            }
        };
        for (i, v) in items.into_iter().enumerate() {
            sink(At::Line(i + 1), Ok(v))?;
        }
    } else {
        for (i, l) in text.lines().enumerate() {
            if !l.trim().is_empty() {
                let v =
                    serde_json::from_str::<Value>(l).map_err(|e| format!("not valid JSON: {e}"));
                sink(At::Line(i + 1), v)?;
            }
        }
    }
    Ok(())
}

/// The rows of a Parquet file, only its columns `wanted` names.
pub(super) fn parquet_records(
    path: &Path,
    wanted: &dyn Fn(&str) -> bool,
    sink: &mut Sink,
) -> Result<(), TrainError> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let unreadable = |e: &dyn std::fmt::Display| TrainError::Dataset {
        path: path.display().to_string(),
        problem: format!("not a readable Parquet file: {e}"),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| unreadable(&e))?;
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows().max(0) as usize)
        .collect();
    let names: Vec<String> = builder
        .parquet_schema()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let roots = columns(path, &names, wanted)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| unreadable(&e))?;
    // The row group of each row, from the groups' row counts.
    let (mut group, mut group_end) = (0, groups.first().copied().unwrap_or(0));
    let mut row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| {
            at_row(row, &groups, &mut group, &mut group_end).error(
                path,
                format!("the batch of up to {BATCH_ROWS} rows from here cannot be decoded: {e}"),
            )
        })?;
        for i in 0..batch.num_rows() {
            let at = at_row(row, &groups, &mut group, &mut group_end);
            sink(at, row_value(&batch, i))?;
            row += 1;
        }
    }
    Ok(())
}

/// The place of 0-based `row`, moving `group` on past the groups that end at or before it.
fn at_row(row: usize, groups: &[usize], group: &mut usize, group_end: &mut usize) -> At {
    while row >= *group_end && *group + 1 < groups.len() {
        *group += 1;
        *group_end += groups[*group];
    }
    At::Row {
        row: row + 1,
        group: Some((*group + 1, groups.len())),
    }
}

/// The rows of an Arrow IPC file: the stream format `datasets` writes, or the file format
/// (`ARROW1`), only the columns `wanted` names.
pub(super) fn arrow_records(
    path: &Path,
    wanted: &dyn Fn(&str) -> bool,
    sink: &mut Sink,
) -> Result<(), TrainError> {
    let open = || -> Result<BufReader<File>, TrainError> {
        Ok(BufReader::new(
            File::open(path).map_err(|e| TrainError::io(path, e))?,
        ))
    };
    let unreadable = |e: ArrowError| TrainError::Dataset {
        path: path.display().to_string(),
        problem: format!("not a readable Arrow file: {e}"),
    };
    let mut magic = [0u8; 6];
    let n = open()?
        .read(&mut magic)
        .map_err(|e| TrainError::io(path, e))?;
    let batches: Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>> =
        if magic[..n] == *b"ARROW1" {
            use arrow_ipc::reader::FileReader;
            let schema = FileReader::try_new(open()?, None)
                .map_err(unreadable)?
                .schema();
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let projection = columns(path, &names, wanted)?;
            Box::new(FileReader::try_new(open()?, Some(projection)).map_err(unreadable)?)
        } else {
            use arrow_ipc::reader::StreamReader;
            // A stream cut short between messages reads as a shorter stream: the writer's
            // end-of-stream marker (`datasets` and pyarrow close their streams with it) is
            // what says the file is whole.
            if !ends_with_stream_marker(path)? {
                return Err(TrainError::Dataset {
                    path: path.display().to_string(),
                    problem: "the Arrow stream has no end-of-stream marker: the file is cut \
                              short (or still being written)"
                        .into(),
                });
            }
            let schema = StreamReader::try_new(open()?, None)
                .map_err(unreadable)?
                .schema();
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let projection = columns(path, &names, wanted)?;
            Box::new(StreamReader::try_new(open()?, Some(projection)).map_err(unreadable)?)
        };
    let mut row = 0;
    for batch in batches {
        let at = At::Row {
            row: row + 1,
            group: None,
        };
        let batch = batch.map_err(|e| {
            at.error(
                path,
                format!("the record batch from here cannot be decoded: {e}"),
            )
        })?;
        for i in 0..batch.num_rows() {
            let at = At::Row {
                row: row + 1,
                group: None,
            };
            sink(at, row_value(&batch, i))?;
            row += 1;
        }
    }
    Ok(())
}

/// Whether the file ends with the Arrow IPC end-of-stream marker (a continuation token and a
/// zero length).
fn ends_with_stream_marker(path: &Path) -> Result<bool, TrainError> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let len = f.metadata().map_err(|e| TrainError::io(path, e))?.len();
    if len < 8 {
        return Ok(false);
    }
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::End(-8))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| TrainError::io(path, e))?;
    Ok(tail == [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
}

/// The indices of the columns to read; an error when the file has none of them.
fn columns(
    path: &Path,
    names: &[String],
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<usize>, TrainError> {
    let keep: Vec<usize> = (0..names.len()).filter(|&i| wanted(&names[i])).collect();
    if keep.is_empty() {
        return Err(TrainError::Dataset {
            path: path.display().to_string(),
            problem: format!(
                "no column the data forms read (its columns: {}; --columns maps other names)",
                names.join(", ")
            ),
        });
    }
    Ok(keep)
}
