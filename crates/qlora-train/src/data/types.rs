//! What reading data takes and gives: the forms, the options, the samples.

use qlora_nn::IGNORE_INDEX;

/// The form of a data file's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataFormat {
    /// Decided per record from its keys (`messages`, `conversations`, `prompt` +
    /// `completion`, `instruction`, `text`); `.txt` files are text.
    Auto,
    /// Chat messages (`messages`, with an optional `system` field).
    Chat,
    /// ShareGPT's `conversations` of `from`/`value` turns (`human`, `gpt`, `system`).
    ShareGpt,
    /// TRL's prompt/completion: `prompt` and `completion`, each a string or a list of messages.
    PromptCompletion,
    /// Instruction / input / output.
    Alpaca,
    /// Plain text.
    Text,
}

impl DataFormat {
    /// The name the command line uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Auto => "auto",
            DataFormat::Chat => "chat",
            DataFormat::ShareGpt => "sharegpt",
            DataFormat::PromptCompletion => "prompt-completion",
            DataFormat::Alpaca => "alpaca",
            DataFormat::Text => "text",
        }
    }
}

impl std::str::FromStr for DataFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => DataFormat::Auto,
            "chat" => DataFormat::Chat,
            "sharegpt" => DataFormat::ShareGpt,
            "prompt-completion" => DataFormat::PromptCompletion,
            "alpaca" => DataFormat::Alpaca,
            "text" => DataFormat::Text,
            _ => {
                return Err(format!(
                    "unknown format `{s}` (auto, chat, sharegpt, prompt-completion, alpaca, text)"
                ));
            }
        })
    }
}

/// What to do with a sample longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// An error naming the file and line.
    Error,
    /// Keep the first `max_len` tokens.
    Truncate,
}

/// How to read a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// The file's form.
    pub format: DataFormat,
    /// Longest sample, in tokens.
    pub max_len: usize,
    /// Samples longer than `max_len`.
    pub overflow: Overflow,
    /// Skip malformed records (counting them) instead of failing on the first.
    pub skip_invalid: bool,
    /// Field names of the file for the names the forms use, `(ours, theirs)`: for example
    /// `("messages", "dialog")` reads a record's `dialog` as its `messages`.
    pub columns: Vec<(String, String)>,
    /// Train on every token, the prompt's too (TRL's `assistant_only_loss=False`,
    /// `completion_only_loss=False`); by default only the replies (chat, ShareGPT, alpaca) and
    /// the completions (prompt/completion) train.
    pub train_on_inputs: bool,
    /// The split to read from a dataset folder (`datasets.save_to_disk`'s or the hub's layout):
    /// `train` when `None`; an error for a single file.
    pub split: Option<String>,
}

impl Default for DataOptions {
    /// Forms told apart per record, 2048 tokens at most (longer samples cut), malformed
    /// records an error, the file's own field names, loss on the responses.
    fn default() -> Self {
        Self {
            format: DataFormat::Auto,
            max_len: 2048,
            overflow: Overflow::Truncate,
            skip_invalid: false,
            columns: Vec::new(),
            train_on_inputs: false,
            split: None,
        }
    }
}

/// One tokenized training sample: `labels[i]` is `input_ids[i]` where the loss counts and
/// [`IGNORE_INDEX`] elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels, same length.
    pub labels: Vec<i64>,
    /// For a sample [`pack`] made of several, their lengths in order (they sum to the
    /// length); empty for one sample.
    pub seq_lengths: Vec<usize>,
}

impl Sample {
    /// One sample of `input_ids` and their `labels`.
    pub fn new(input_ids: Vec<u32>, labels: Vec<i64>) -> Self {
        Self {
            input_ids,
            labels,
            seq_lengths: Vec::new(),
        }
    }

    /// The samples this one holds, each `(ids, labels)`: itself, or those [`pack`] joined.
    pub fn sequences(&self) -> Vec<(&[u32], &[i64])> {
        if self.seq_lengths.is_empty() {
            return vec![(&self.input_ids, &self.labels)];
        }
        let mut at = 0;
        self.seq_lengths
            .iter()
            .map(|&n| {
                let s = (&self.input_ids[at..at + n], &self.labels[at..at + n]);
                at += n;
                s
            })
            .collect()
    }

    /// Tokens the loss counts (excluding the first position of each sample it holds, which
    /// predicts nothing).
    pub fn trained_tokens(&self) -> usize {
        self.sequences()
            .iter()
            .map(|(_, labels)| {
                labels
                    .iter()
                    .skip(1)
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum()
    }
}

/// What loading found besides the samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The forms the records were read as, with their counts (what `auto` chose).
    pub forms: std::collections::BTreeMap<DataFormat, usize>,
    /// Records read.
    pub records: usize,
    /// Malformed records skipped (with `skip_invalid`).
    pub skipped: usize,
    /// Samples cut to `max_len`.
    pub truncated: usize,
    /// Data files read (more than one for a dataset folder).
    pub files: usize,
}
