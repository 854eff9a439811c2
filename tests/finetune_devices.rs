//! `finetune --devices`: data-parallel training from the command line on two wgpu device
//! instances (lavapipe in CI) prints the bytes that travel per step (adapter gradients and
//! weights only) and trains; a device list that cannot work is a named error. Ignored (with the
//! reason) on a machine with no Vulkan driver.

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn finetune_on_two_devices() {
    let tiny = cli::TinyRun::new("devices");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let out = work.join("run");
    let args = |devices: &str| -> Vec<String> {
        [
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--seq-len",
            "64",
            "--rank",
            "4",
            "--alpha",
            "8",
            "--eval-every",
            "3",
            "--save-every",
            "3",
            "--devices",
            devices,
            "--no-samples",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |devices: &str| {
        let a = args(devices);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli::run("finetune", &a)
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let o = run("wgpu:cpu,wgpu:default");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("data parallel on 2 devices"), "{t}");
    assert!(t.contains("bytes of adapter gradients"), "{t}");
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    assert!(metrics.contains("transfer_bytes"), "{metrics}");

    for (devices, problem) in [
        ("wgpu:cpu,wgpu:cpu", "listed twice"),
        ("wgpu:cpu,tpu:0", "unknown device `tpu:0`"),
        ("wgpu:discrete:x", "not a device index"),
    ] {
        let _ = std::fs::remove_dir_all(&out);
        let o = run(devices);
        let t = text(&o);
        assert!(!o.status.success(), "{devices}: {t}");
        assert!(t.contains(problem), "{devices}: {t}");
        assert!(
            !out.join("checkpoint").exists(),
            "{devices}: a checkpoint was written"
        );
    }
}
