//! The data files behind a path: the file itself, or a dataset folder's files of one split, in
//! the two layouts users have on disk:
//!
//! - **`datasets.save_to_disk`**: a `DatasetDict` folder (`dataset_dict.json` listing the splits,
//!   one subfolder each) or one `Dataset` folder (`state.json` listing its `data-*.arrow` files);
//! - **the hub's** (a `git clone` or `snapshot_download` of a dataset repository, or
//!   the Parquet conversion), resolved in `datasets`' order without a `configs:` card: shards
//!   `data/{split}-00000-of-00002.parquet` name their split, whatever it is (`train_sft`); else
//!   the split keywords of `datasets`' patterns in folder names (`train/0000.parquet`), else in
//!   file names (`my_data_test.jsonl`): `validation` also as `valid`, `val`, `dev`; `test` also
//!   as `testing`, `eval`, `evaluation`; `train` also as `training`. A folder whose files name
//!   no split is all `train`. Only the files of the folder's most common kind are read (a
//!   `LICENSE.txt` beside Parquet files is not data).
//!
//! A README's `configs:` section choosing other files is not read (say which with a path
//! to them instead).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::TrainError;

/// The kinds of data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// JSONL, or a JSON array (each maybe gzip-compressed).
    Json,
    /// Plain text (maybe gzip-compressed).
    Text,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC (stream or file format).
    Arrow,
}

/// The file's kind from its name (a `.gz` suffix aside) or, for other names, its first bytes.
pub(super) fn kind(path: &Path) -> Kind {
    let name = inner_name(path).to_ascii_lowercase();
    if name.ends_with(".txt") {
        return Kind::Text;
    }
    if name.ends_with(".parquet") {
        return Kind::Parquet;
    }
    if name.ends_with(".arrow") {
        return Kind::Arrow;
    }
    let mut head = [0u8; 6];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    match &head[..n] {
        [b'P', b'A', b'R', b'1', ..] => Kind::Parquet,
        b"ARROW1" => Kind::Arrow,
        _ => Kind::Json,
    }
}

/// The file's name without a `.gz` suffix.
pub(super) fn inner_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".gz").map(str::to_string).unwrap_or(name)
}

/// The data files of `path`: the file, or the folder's files of `split` (`train` when `None`).
pub(super) fn data_files(path: &Path, split: Option<&str>) -> Result<Vec<PathBuf>, TrainError> {
    let err = |problem: String| TrainError::Dataset {
        path: path.display().to_string(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| TrainError::io(path, e))?;
    if !meta.is_dir() {
        if let Some(s) = split {
            return Err(err(format!(
                "--split {s} chooses among a dataset folder's splits; this is one file"
            )));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let want = split.unwrap_or("train");
    let dict = path.join("dataset_dict.json");
    if dict.is_file() {
        let v = json_file(&dict)?;
        let splits: Vec<String> = v["splits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| TrainError::Dataset {
                path: dict.display().to_string(),
                problem: "no `splits` list (not written by datasets' save_to_disk?)".into(),
            })?;
        if !splits.iter().any(|s| s == want) {
            return Err(err(format!(
                "no split `{want}` (its splits: {}; --split chooses)",
                splits.join(", ")
            )));
        }
        return saved_dataset(&path.join(want), None);
    }
    if path.join("state.json").is_file() {
        return saved_dataset(path, split);
    }
    hub_files(path, want)
}

/// The Arrow files of one `Dataset` folder of `save_to_disk`, in its `state.json`'s order; a
/// `split` asked for must be the one it holds.
fn saved_dataset(dir: &Path, split: Option<&str>) -> Result<Vec<PathBuf>, TrainError> {
    let state_path = dir.join("state.json");
    let state = json_file(&state_path)?;
    let bad = |problem: String| TrainError::Dataset {
        path: state_path.display().to_string(),
        problem,
    };
    if let (Some(want), Some(held)) = (split, state["_split"].as_str())
        && want != held
    {
        return Err(bad(format!(
            "this folder holds the split `{held}`, not `{want}` (--split)"
        )));
    }
    let files: Vec<PathBuf> = state["_data_files"]
        .as_array()
        .ok_or_else(|| {
            bad("no `_data_files` list (not written by datasets' save_to_disk?)".into())
        })?
        .iter()
        .map(|f| {
            f["filename"]
                .as_str()
                .map(|n| dir.join(n))
                .ok_or_else(|| bad("a `_data_files` entry without a `filename`".into()))
        })
        .collect::<Result<_, _>>()?;
    if files.is_empty() {
        return Err(bad("`_data_files` lists no file".into()));
    }
    for f in &files {
        if !f.is_file() {
            return Err(bad(format!("lists {}, which is missing", f.display())));
        }
    }
    Ok(files)
}

/// The data files under a hub-style folder that belong to `want`, resolved in `datasets`'
/// order: shards `data/{split}-NNNNN-of-NNNNN*` (any split name; if there are any, only they
/// count), else the split keywords in folder names, else in file names, else every file is
/// `train`. Only files of the folder's most common kind are read, as `datasets` picks one
/// format from the extensions.
fn hub_files(dir: &Path, want: &str) -> Result<Vec<PathBuf>, TrainError> {
    let mut all = Vec::new();
    collect(dir, 0, &mut all)?;
    all.sort();
    if all.is_empty() {
        return Err(TrainError::Dataset {
            path: dir.display().to_string(),
            problem: "no data file in this folder (.parquet, .arrow, .jsonl, .json, .txt, each \
                      maybe .gz)"
                .into(),
        });
    }
    let all = most_common_kind(all);
    let rel = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_path_buf();
    let missing = |found: Vec<String>| {
        let mut found = found;
        found.sort();
        found.dedup();
        TrainError::Dataset {
            path: dir.display().to_string(),
            problem: format!(
                "no file of split `{want}` (the splits its files name: {}; --split chooses)",
                found.join(", ")
            ),
        }
    };
    let sharded: Vec<(PathBuf, String)> = all
        .iter()
        .filter_map(|p| shard_split(&rel(p)).map(|s| (p.clone(), s)))
        .collect();
    if !sharded.is_empty() {
        let chosen: Vec<PathBuf> = sharded
            .iter()
            .filter(|(_, s)| s == want)
            .map(|(p, _)| p.clone())
            .collect();
        if chosen.is_empty() {
            return Err(missing(sharded.into_iter().map(|(_, s)| s).collect()));
        }
        return Ok(chosen);
    }
    for in_folders in [true, false] {
        let marked: Vec<(PathBuf, Vec<&str>)> = all
            .iter()
            .map(|p| {
                let r = rel(p);
                let part = if in_folders {
                    r.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::from(r.file_name().unwrap_or_default())
                };
                (p.clone(), splits_named(&words(&part)))
            })
            .collect();
        if marked.iter().any(|(_, s)| !s.is_empty()) {
            let chosen: Vec<PathBuf> = marked
                .iter()
                .filter(|(_, s)| s.contains(&want))
                .map(|(p, _)| p.clone())
                .collect();
            if chosen.is_empty() {
                let found = marked
                    .iter()
                    .flat_map(|(_, s)| s.iter().map(|x| x.to_string()));
                return Err(missing(found.collect()));
            }
            return Ok(chosen);
        }
    }
    if want == "train" {
        return Ok(all);
    }
    Err(TrainError::Dataset {
        path: dir.display().to_string(),
        problem: format!("no file of split `{want}` (its files name no split: all are `train`)"),
    })
}

/// The split of a shard `data/{split}-NNNNN-of-NNNNN*` (the hub's and `push_to_hub`'s names).
fn shard_split(rel: &Path) -> Option<String> {
    let mut parts = rel.components();
    if parts.next()?.as_os_str() != "data" {
        return None;
    }
    let name = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return None;
    }
    let b = name.as_bytes();
    // `-` 5 digits `-of-` 5 digits, the split before it.
    (1..b.len().saturating_sub(14)).find_map(|i| {
        let tail = &b[i..i + 15];
        let digits = |r: std::ops::Range<usize>| tail[r].iter().all(u8::is_ascii_digit);
        (tail[0] == b'-' && digits(1..6) && &tail[6..10] == b"-of-" && digits(10..15))
            .then(|| name[..i].to_string())
    })
}

/// The keyword splits whose words are among `words`.
fn splits_named(words: &[String]) -> Vec<&'static str> {
    KEYWORDS
        .iter()
        .filter(|(_, keys)| keys.iter().any(|k| words.iter().any(|w| w == k)))
        .map(|(s, _)| *s)
        .collect()
}

/// The files of the most common kind among `files` (ties: Parquet, Arrow, JSON, text).
fn most_common_kind(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let order = [Kind::Parquet, Kind::Arrow, Kind::Json, Kind::Text];
    let kinds: Vec<Kind> = files.iter().map(|p| kind(p)).collect();
    let best = order
        .iter()
        .copied()
        .max_by_key(|k| {
            let n = kinds.iter().filter(|x| *x == k).count();
            // Earlier kinds win ties.
            (n, std::cmp::Reverse(order.iter().position(|o| o == k)))
        })
        .expect("four kinds");
    files
        .into_iter()
        .zip(kinds)
        .filter(|(_, k)| *k == best)
        .map(|(p, _)| p)
        .collect()
}

/// The split names and the words that mark them in a data file's path, as `datasets`' patterns.
const KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "val", "dev"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The words of a path relative to its folder, split at `datasets`' separators (`-`, `_`, `.`,
/// space, digits, `/`), lowercase; the file's extension is not a word.
fn words(rel: &Path) -> Vec<String> {
    let mut text = rel.to_string_lossy().to_ascii_lowercase();
    for ext in [".gz", ".parquet", ".arrow", ".jsonl", ".json", ".txt"] {
        if let Some(t) = text.strip_suffix(ext) {
            text = t.to_string();
        }
    }
    text.split(|c: char| "-_. /\\".contains(c) || c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Data files under `dir` (eight folders deep at most), hidden entries, `__` folders (such as
/// `__pycache__`) and `datasets`' own metadata left out. Linked files are read (the hub's cache
/// links its snapshots to blobs); linked folders are not followed, so a link loop cannot
/// repeat files.
fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type().map_err(|e| TrainError::io(&p, e))?;
        if name.starts_with('.') {
            continue;
        }
        if ft.is_dir() {
            if depth < 8 && !name.starts_with("__") {
                collect(&p, depth + 1, out)?;
            }
            continue;
        }
        if ft.is_symlink() && !p.is_file() {
            continue;
        }
        let lower = inner_name(&p).to_ascii_lowercase();
        let data = [".parquet", ".arrow", ".jsonl", ".json", ".txt"]
            .iter()
            .any(|e| lower.ends_with(e));
        let metadata = [
            "dataset_info.json",
            "dataset_infos.json",
            "state.json",
            "dataset_dict.json",
            "config.json",
        ]
        .contains(&lower.as_str());
        if data && !metadata {
            out.push(p);
        }
    }
    Ok(())
}

fn json_file(path: &Path) -> Result<Value, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Dataset {
        path: path.display().to_string(),
        problem: format!("not valid JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_words_mark_splits_as_datasets_patterns_do() {
        let w = |p: &str| words(Path::new(p));
        assert_eq!(
            w("data/train-00000-of-00002.parquet"),
            ["data", "train", "of"]
        );
        assert_eq!(w("my_data_test.jsonl.gz"), ["my", "data", "test"]);
        assert_eq!(
            w("default/validation/0000.parquet"),
            ["default", "validation"]
        );
        // `trainer` is not `train`.
        assert_eq!(w("trainer_logs.jsonl"), ["trainer", "logs"]);
    }

    #[test]
    fn shards_name_their_split_whatever_it_is() {
        let s = |p: &str| shard_split(Path::new(p));
        assert_eq!(
            s("data/train_sft-00000-of-00003.parquet").as_deref(),
            Some("train_sft")
        );
        assert_eq!(
            s("data/test-00001-of-00002-a1b2.parquet").as_deref(),
            Some("test")
        );
        assert_eq!(s("train-00000-of-00001.parquet"), None);
        assert_eq!(s("data/x/train-00000-of-00001.parquet"), None);
        assert_eq!(s("data/train.parquet"), None);
    }
}
