//! `examples/learner.rs`: burn-train's `Learner` trains the QLoRA tiny model a few steps
//! (Burn's plain renderer, as there is no terminal here): the held-out loss falls, burn-train
//! writes its metric logs, and the adapter it saves loads as a PEFT folder with the weights the
//! training changed.

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

use burn::tensor::Device;
use burn_qlora::nn::PeftAdapter;

#[test]
fn the_learner_example_trains_the_tiny_model_and_saves_a_peft_adapter() {
    let tiny = cli::TinyRun::new("learner");
    let out = tiny.work.join("run");
    let text = cli::ok(
        "learner",
        &[
            "--model",
            tiny.model.to_str().unwrap(),
            "--data",
            tiny.data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "8",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--lr",
            "5e-3",
            "--rank",
            "4",
            "--device",
            "flex",
        ],
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("held-out loss "))
        .unwrap_or_else(|| panic!("no held-out loss line in:\n{text}"));
    let losses: Vec<f64> = line
        .trim_start_matches("held-out loss ")
        .split(" -> ")
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        losses[1] < losses[0],
        "held-out loss did not fall: {line}\n{text}"
    );
    // burn-train ran its loop: its renderer reported the training split.
    assert!(text.contains("Starting split 'train'"), "{text}");
    let adapter = PeftAdapter::load(out.join("adapter"), &Device::flex()).unwrap();
    assert_eq!(adapter.config.r, 4);
    // lora_B starts at zero (PEFT's init): it has moved only if the Learner updated it.
    assert!(!adapter.modules.is_empty());
    let moved = adapter
        .modules
        .values()
        .any(|w| w.lora_b.clone().abs().max().into_scalar::<f32>() > 0.0);
    assert!(
        moved,
        "every lora_B is still zero: the Learner did not update the adapters"
    );
}
