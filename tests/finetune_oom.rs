//! Out of host memory during `finetune`: the process cannot continue (Rust aborts on a failed
//! allocation), but it says what to change first, and leaves no partial checkpoint behind.
//! The run is made to need gigabytes (a batch of 8192 conversations) under an address-space
//! limit of 1.5 GiB (`ulimit -v`), far above what loading the tiny model takes.

use std::process::Command;

use burn_qlora::train::find_checkpoint;

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

#[test]
fn running_out_of_memory_says_what_to_change() {
    let tiny = cli::TinyRun::new("oom");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let out = work.join("run");
    let script = format!(
        "ulimit -v 1572864 && exec '{}' --model '{}' --data '{}' --out '{}' --steps 2 \
         --batch-size 8192 --seq-len 64 --device flex --no-samples --save-every 1",
        cli::example("finetune").display(),
        model.display(),
        data.display(),
        out.display()
    );
    let run = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the run fit in 1.5 GiB: {stderr}");
    for words in ["out of host memory", "--batch-size", "--resume"] {
        assert!(stderr.contains(words), "no `{words}` in: {stderr}");
    }
    // The run did not checkpoint: the advice names block checkpointing first.
    assert!(stderr.contains("--grad-checkpointing block"), "{stderr}");
    assert!(find_checkpoint(&out).is_none());
    let partial: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}
