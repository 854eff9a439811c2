//! A device error during `finetune`: on wgpu a batch whose buffers the device cannot allocate
//! (65536 conversations: its logits alone take 5.5 GB, past any device's largest buffer;
//! lavapipe in CI fails even earlier) fails the step with a panic from the runtime; `finetune` stops with an error that says what failed, which
//! checkpoint is intact, and what to change, and leaves no partial checkpoint behind.
//!
//! Needs a wgpu adapter: ignored (with the reason) on a machine with no Vulkan driver.

use std::process::Command;

use burn_qlora::train::find_checkpoint;

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn a_failed_device_step_says_what_to_change() {
    let tiny = cli::TinyRun::new("device-error");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let out = work.join("run");
    let (m, d, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let run = Command::new(cli::example("finetune"))
        .args(["--model", m, "--data", d, "--out", o, "--steps", "1"])
        .args([
            "--batch-size",
            "65536",
            "--seq-len",
            "64",
            "--device",
            "wgpu",
            "--no-samples",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the step fit on the device");
    for words in [
        "training step 1 failed on the device",
        "no checkpoint had been written yet",
        "--batch-size",
        "--resume",
    ] {
        assert!(stderr.contains(words), "no `{words}` in: {stderr}");
    }
    // The run did not checkpoint: the advice names block checkpointing first.
    assert!(stderr.contains("--grad-checkpointing block"), "{stderr}");
    assert!(find_checkpoint(&out).is_none());
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
