//! The data forms users bring (issue #27) against what TRL 1.16 makes of the same records with
//! the same tokenizers and chat templates (`tests/fixtures/tokenizers/<family>/forms.json`, made
//! by `tests/fixtures/scripts/make_data_forms.py`): ShareGPT conversations, chat with a `system`
//! field, TRL's prompt/completion as strings and as messages; each read with `--format auto`,
//! the same token ids and the same trained tokens (TRL's `assistant_only_loss` training template
//! where the family has one, and `completion_only_loss`). Then `--columns`, `--train-on-inputs`,
//! gzip files and the forms `auto` reports.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{FAMILIES, cases, ids, tokenizer, trained};
use qlora_tokenizer::Tokenizer;
use qlora_train::{DataFormat, DataOptions, LoadReport, Overflow, Sample, load_dataset};
use serde_json::{Value, json};

fn options() -> DataOptions {
    DataOptions {
        max_len: 4096,
        overflow: Overflow::Error,
        ..DataOptions::default()
    }
}

/// The samples and report `load_dataset` makes of `records` written as `name`.
fn load(
    tok: &Tokenizer,
    records: &[Value],
    name: &str,
    opts: &DataOptions,
) -> (Vec<Sample>, LoadReport) {
    let d = std::env::temp_dir().join(format!("qlora-forms-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    if name.ends_with(".gz") {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(&p, text).unwrap();
    }
    let out = load_dataset(&p, tok, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    std::fs::remove_file(&p).unwrap();
    out
}

#[test]
fn every_form_gives_trls_ids_and_trained_tokens_on_six_families() {
    let mut masks = 0;
    for family in FAMILIES {
        let (tok, _) = tokenizer(family);
        for (k, case) in cases(family).iter().enumerate() {
            let form = case["form"].as_str().unwrap();
            let what = format!("{family} case {k} ({form})");
            let (s, report) = load(&tok, &[case["record"].clone()], "one.jsonl", &options());
            assert_eq!(s.len(), 1, "{what}");
            assert_eq!(s[0].input_ids, ids(&case["ids"]), "{what}: TRL's ids");
            let want_form = match form {
                "sharegpt" => DataFormat::ShareGpt,
                "chat-system" => DataFormat::Chat,
                _ => DataFormat::PromptCompletion,
            };
            assert_eq!(
                report.forms.keys().copied().collect::<Vec<_>>(),
                [want_form],
                "{what}: the form auto chose"
            );
            if let Some(mask) = case.get("mask") {
                let want: Vec<bool> = mask.as_array().unwrap().iter().map(|m| m == 1).collect();
                assert_eq!(trained(&s[0]), want, "{what}: TRL's trained tokens");
                masks += 1;
            } else {
                assert!(trained(&s[0]).iter().any(|&t| t), "{what}: a reply trains");
            }
        }
    }
    assert!(masks >= 30, "only {masks} cases compared TRL's masks");
}

#[test]
fn train_on_inputs_trains_every_token_of_every_form() {
    let (tok, _) = tokenizer("qwen2_5");
    let records: Vec<Value> = cases("qwen2_5")
        .iter()
        .map(|c| c["record"].clone())
        .collect();
    let opts = DataOptions {
        train_on_inputs: true,
        ..options()
    };
    let (samples, _) = load(&tok, &records, "all.jsonl", &opts);
    let (plain, _) = load(&tok, &records, "plain.jsonl", &options());
    assert_eq!(samples.len(), records.len());
    for (s, p) in samples.iter().zip(&plain) {
        assert_eq!(s.input_ids, p.input_ids, "the same tokens");
        assert!(trained(s).iter().all(|&t| t), "every token trains");
        assert!(
            trained(p).iter().any(|&t| !t),
            "by default the prompt does not"
        );
    }
}

#[test]
fn columns_read_other_field_names_as_the_forms_own() {
    let (tok, _) = tokenizer("qwen2_5");
    let chat = json!({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    let renamed = json!({"dialog": chat["messages"].clone(), "id": 7});
    let pc = json!({"prompt": "Q: 1 + 1?\nA:", "completion": " Two."});
    let pc_renamed = json!({"question": pc["prompt"].clone(), "answer": pc["completion"].clone()});
    let opts = DataOptions {
        columns: vec![
            ("messages".into(), "dialog".into()),
            ("prompt".into(), "question".into()),
            ("completion".into(), "answer".into()),
        ],
        ..options()
    };
    let (want, _) = load(&tok, &[chat, pc], "own.jsonl", &options());
    let (got, report) = load(&tok, &[renamed, pc_renamed], "theirs.jsonl", &opts);
    assert_eq!(got, want);
    assert_eq!(report.forms.len(), 2, "{:?}", report.forms);
    // Without the mapping the records are of no known form.
    let e = load_dataset(
        write_tmp("unmapped.jsonl", &json!({"dialog": []}).to_string()).as_path(),
        &tok,
        &options(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--columns maps other field names"), "{e}");
}

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-forms-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn gzip_files_read_as_their_plain_form_and_auto_counts_the_forms() {
    let (tok, _) = tokenizer("phi3");
    let records: Vec<Value> = cases("phi3").iter().map(|c| c["record"].clone()).collect();
    let (plain, report) = load(&tok, &records, "forms.jsonl", &options());
    let (gz, gz_report) = load(&tok, &records, "forms.jsonl.gz", &options());
    assert_eq!(gz, plain);
    assert_eq!(gz_report, report);
    let counts: Vec<(DataFormat, usize)> = report.forms.into_iter().collect();
    assert_eq!(
        counts,
        [
            (DataFormat::Chat, 1),
            (DataFormat::ShareGpt, 2),
            (DataFormat::PromptCompletion, 4)
        ]
    );
    // A .json.gz array too.
    let array = Value::Array(records.clone()).to_string();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(array.as_bytes()).unwrap();
    let p = write_tmp("forms.json.gz", "");
    std::fs::write(&p, enc.finish().unwrap()).unwrap();
    let (from_array, _) = load_dataset(Path::new(&p), &tok, &options()).unwrap();
    assert_eq!(from_array, plain);
}

#[test]
fn sharegpt_reads_as_the_chat_it_holds_with_its_system_prompt() {
    let (tok, _) = tokenizer("qwen2_5");
    let chat = json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    let forms = [
        // A `system` field, `user`/`assistant` as `from` values.
        json!({"system": "Be brief.", "conversations": [
            {"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}]}),
        // An empty system turn is no system prompt; the field then gives it.
        json!({"system": "Be brief.", "conversations": [
            {"from": "system", "value": ""},
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}),
        // Chat's own `system` field.
        json!({"system": "Be brief.", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
    ];
    let (want, _) = load(&tok, &[chat], "chat.jsonl", &options());
    for (k, record) in forms.into_iter().enumerate() {
        let (got, _) = load(&tok, &[record], "form.jsonl", &options());
        assert_eq!(got, want, "form {k}");
    }
}

#[test]
fn a_mapped_field_beside_its_own_name_and_a_prompt_filling_the_length_are_named() {
    let (tok, _) = tokenizer("qwen2_5");
    let opts = DataOptions {
        columns: vec![("messages".into(), "dialog".into())],
        ..options()
    };
    let both = json!({"dialog": [], "messages": []}).to_string();
    let e = load_dataset(write_tmp("both.jsonl", &both).as_path(), &tok, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("both.jsonl:1:")
            && e.contains("both `dialog` (read as `messages` by --columns)"),
        "{e}"
    );
    let long = json!({"prompt": "word ".repeat(40), "completion": " end"}).to_string();
    let short = DataOptions {
        max_len: 8,
        overflow: Overflow::Truncate,
        ..options()
    };
    let e = load_dataset(write_tmp("long.jsonl", &long).as_path(), &tok, &short)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("long.jsonl:1:") && e.contains("cut to --seq-len 8 (the prompt fills it)"),
        "{e}"
    );
    // A gzip file under a plain name, and a .txt.gz file, read as what they hold.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b"plain text to train on").unwrap();
    let bytes = enc.finish().unwrap();
    for name in ["hidden.txt", "text.txt.gz"] {
        let p = write_tmp(name, "");
        std::fs::write(&p, &bytes).unwrap();
        let (s, report) = load_dataset(p.as_path(), &tok, &options()).unwrap();
        assert_eq!(s.len(), 1, "{name}");
        assert_eq!(
            report.forms.into_iter().collect::<Vec<_>>(),
            [(DataFormat::Text, 1)],
            "{name}"
        );
    }
}
