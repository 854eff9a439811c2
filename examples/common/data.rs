//! `finetune`'s data options (the record forms, field names, what trains, long samples, bad
//! records) as one flattened group, and what the run prints about the forms it read.

use burn_qlora::train::{DataFormat, DataOptions, FORM_FIELDS, LoadReport, Overflow};

/// The data options, flattened into a program's own (`#[command(flatten)]`).
#[derive(Clone, Debug, clap::Args)]
pub struct DataArgs {
    /// Data form: auto (told apart per record by its fields), chat (`messages`, with an
    /// optional `system` field), sharegpt (`conversations` of `from`/`value`: human, gpt,
    /// system), prompt-completion (TRL's `prompt` + `completion`, strings or message lists),
    /// alpaca (`instruction`, `input`, `output`), text.
    #[arg(long, default_value = "auto")]
    pub format: DataFormat,
    /// The file's field names for the forms' own, comma separated OURS=THEIRS: for example
    /// `messages=dialog` or `prompt=question,completion=answer` (top-level fields; OURS one of
    /// messages, conversations, system, prompt, completion, instruction, input, output, text).
    #[arg(long, value_delimiter = ',', value_parser = column)]
    pub columns: Vec<(String, String)>,
    /// Train on every token, the prompts' too (TRL's assistant_only_loss=False and
    /// completion_only_loss=False); by default only the replies and completions train.
    #[arg(long)]
    pub train_on_inputs: bool,
    /// Stop with an error on a sample longer than --seq-len (by default it is cut to
    /// --seq-len tokens, and the count of cut samples is printed).
    #[arg(long)]
    pub strict_length: bool,
    /// Skip malformed records (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// The split to read when the data is a dataset folder (as `datasets.save_to_disk` or the
    /// hub lays it out: `data/train-*.parquet`, `train/…`); `train` by default.
    #[arg(long)]
    pub split: Option<String>,
}

impl DataArgs {
    /// Whether no data option was given (for programs where they conflict with another input).
    pub fn is_default(&self) -> bool {
        self.format == DataFormat::Auto
            && self.columns.is_empty()
            && !self.train_on_inputs
            && !self.strict_length
            && !self.skip_invalid
            && self.split.is_none()
    }

    /// The options for samples of at most `max_len` tokens. Errors on a `--columns` that names
    /// a field twice.
    pub fn options(&self, max_len: usize) -> Result<DataOptions, String> {
        for (i, (ours, theirs)) in self.columns.iter().enumerate() {
            if let Some((o, t)) = self.columns[..i]
                .iter()
                .find(|(o, t)| o == ours || t == theirs)
            {
                return Err(format!(
                    "--columns: `{ours}={theirs}` and `{o}={t}` name one field twice"
                ));
            }
        }
        Ok(DataOptions {
            format: self.format,
            max_len,
            overflow: if self.strict_length {
                Overflow::Error
            } else {
                Overflow::Truncate
            },
            skip_invalid: self.skip_invalid,
            columns: self.columns.clone(),
            train_on_inputs: self.train_on_inputs,
            split: self.split.clone(),
        })
    }
}

/// One `--columns` entry, `OURS=THEIRS`.
fn column(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((ours, theirs)) if !ours.trim().is_empty() && !theirs.trim().is_empty() => {
            let ours = ours.trim();
            if !FORM_FIELDS.contains(&ours) {
                return Err(format!(
                    "`{ours}` is not a field the forms read ({})",
                    FORM_FIELDS.join(", ")
                ));
            }
            Ok((ours.to_string(), theirs.trim().to_string()))
        }
        _ => Err(format!(
            "`{s}` is not OURS=THEIRS (for example messages=dialog)"
        )),
    }
}

/// The forms the records were read as, for the log: `chat 30, sharegpt 2`.
pub fn forms(report: &LoadReport) -> String {
    report
        .forms
        .iter()
        .map(|(f, n)| format!("{} {n}", f.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The count of files a dataset folder gave, for the log: ` (3 files)`, or nothing for one.
pub fn files(report: &LoadReport) -> String {
    if report.files > 1 {
        format!(" ({} files)", report.files)
    } else {
        String::new()
    }
}
