//! Training data: JSONL or JSON files in the forms people use, tokenized into samples whose
//! labels mask everything but the response.
//!
//! - chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`,
//!   rendered with the model's chat template and tokenized whole without added special tokens,
//!   as transformers' `apply_chat_template(tokenize=True)` and TRL do (the template writes its
//!   own bos); loss on the assistant turns only (TRL's `assistant_only_loss`): the template's
//!   `{% generation %}` blocks where it has them, exactly as TRL masks them; otherwise each
//!   reply's text through its end-of-turn marker (what follows the reply both where the
//!   conversation goes on and where it ends, such as `<|im_end|>\n` or `<|eot_id|>`), found
//!   in the rendered text, so templates that render earlier turns differently (Qwen3's
//!   reasoning) train as they render; a `system` field is put first as a system message;
//! - ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}]}`, as
//!   axolotl and LLaMA-Factory read it, then as chat;
//! - prompt/completion (TRL's): `{"prompt", "completion"}`, both strings or both message lists,
//!   tokenized as TRL's `SFTTrainer` does; loss on the completion (`completion_only_loss`);
//! - alpaca: `{"instruction", "input" (optional), "output"}`, rendered as a user turn
//!   (instruction, then the input after a blank line) and an assistant turn; loss on the output;
//! - text: `{"text": "..."}` per line, or a `.txt` file cut into windows of `max_len` tokens;
//!   as TRL does, the eos token is appended and the text is tokenized with the special tokens
//!   transformers' `tokenizer(text)` adds (Llama 3's bos); loss on every token.
//!
//! Files may be gzip-compressed (`.jsonl.gz`, `.json.gz`, `.txt.gz`, or gzip under another
//! name), Apache Parquet (streamed by row group: `sources.rs`) or `datasets`' Arrow files, or a
//! dataset folder as `datasets.save_to_disk` or the hub lays it out, one split chosen
//! (`files.rs`); a Parquet or Arrow row is the JSON record of its columns (`arrow_rows.rs`).
//! `DataOptions::columns` maps other field names onto these, and `train_on_inputs` trains
//! every token (see `forms.rs`).

mod arrow_rows;
mod files;
mod forms;
mod pack;
mod read;
mod sources;
mod tokenize;
mod types;

pub use forms::FORM_FIELDS;
pub use pack::pack;
pub use read::{load_dataset, stream_dataset};
pub use types::{DataFormat, DataOptions, LoadReport, Overflow, Sample};
