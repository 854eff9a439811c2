//! QLoRA training steps on the device: random weights of a model's shape (the models
//! themselves are too big to carry), LoRA r16 α32 on the seven linears over an NF4 + double
//! quant base, AdamW, the fused head + loss, as `benches/train_step.rs` trains on the CPU.
//! Each case reports its median step time, tokens/s, and the device memory pool's bytes: in use
//! once the model is on the device, the most in use after a forward or a backward pass (the
//! step's peak), and reserved after the steps (whole pages, kept for reuse); the pool is emptied
//! between cases.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_qlora::llama::{LlamaConfig, causal_lm_loss_fused};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{GradientCheckpointing, LoraApplier, LoraConfig, ModuleSelector};
use serde_json::{Value, json};

/// One model shape at one batch.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub vocab: usize,
    pub tied: bool,
    pub batch: usize,
    pub seq: usize,
    pub checkpointing: GradientCheckpointing,
}

/// The default model's shape (SmolLM2-135M-Instruct) at `batch × seq`.
pub fn smollm2(batch: usize, seq: usize) -> Case {
    Case {
        name: "default model (SmolLM2-135M shape)",
        hidden: 576,
        ffn: 1536,
        heads: 9,
        kv_heads: 3,
        layers: 30,
        vocab: 49152,
        tied: true,
        batch,
        seq,
        checkpointing: GradientCheckpointing::Off,
    }
}

/// A LLaMA-7B-shaped stack of `layers` decoder layers (vocabulary 32000).
pub fn llama7b(layers: usize, seq: usize) -> Case {
    Case {
        name: "LLaMA-7B-shaped stack",
        hidden: 4096,
        ffn: 11008,
        heads: 32,
        kv_heads: 32,
        layers,
        vocab: 32000,
        tied: false,
        batch: 1,
        seq,
        checkpointing: GradientCheckpointing::Off,
    }
}

fn in_use(device: &Device) -> u64 {
    device.memory_pool_usage().map_or(0, |u| u.bytes_in_use)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Trains `case` for `warmup + steps` steps on `device` (an autodiff device).
pub fn run(device: &Device, case: &Case, warmup: usize, steps: usize) -> Value {
    device.memory_cleanup();
    device.seed(0);
    let config = LlamaConfig::from_json_str(
        &json!({
            "model_type": "llama", "vocab_size": case.vocab, "hidden_size": case.hidden,
            "intermediate_size": case.ffn, "num_hidden_layers": case.layers,
            "num_attention_heads": case.heads, "num_key_value_heads": case.kv_heads,
            "max_position_embeddings": case.seq.max(512), "tie_word_embeddings": case.tied,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "rope_theta": 10000.0
        })
        .to_string(),
        "<gpu check config>",
    )
    .expect("the check's config is valid");
    let lora = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        lora_dropout: 0.0,
        target_modules: Some(ModuleSelector::List(
            [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        )),
        ..LoraConfig::default()
    };
    let applier = LoraApplier::new(lora, Some(QuantConfig::qlora()), device).expect("lora config");
    let mut model = config
        .init(&applier, 0)
        .expect("model")
        .with_gradient_checkpointing(case.checkpointing);
    let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(0.0).init();
    let ids: Vec<i64> = (0..case.batch * case.seq)
        .map(|i| ((i as u64 * 2_654_435_761) % case.vocab as u64) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [case.batch, case.seq]), device);
    device.sync().expect("device sync");
    let ready = device.memory_pool_usage();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    let mut peak = 0u64;
    for i in 0..warmup + steps {
        let t = Instant::now();
        let hidden = model.forward_hidden(ids.clone(), None);
        let loss = causal_lm_loss_fused(hidden, model.head_weight(), ids.clone());
        // Buffers are taken when an op is queued, so the pool's bytes in use right after the
        // forward pass (the activations kept for the backward pass) and after the backward
        // pass (the gradients) bound the step's high-water mark from below.
        let forward = in_use(device);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        peak = peak.max(forward).max(in_use(device));
        model = optim.step(1e-4, model, grads);
        let l: f32 = loss.into_scalar();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        losses.push(l);
    }
    let after = device.memory_pool_usage();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tokens = (case.batch * case.seq) as f64;
    json!({
        "case": case.name, "layers": case.layers, "batch": case.batch, "seq": case.seq,
        "hidden": case.hidden, "vocab": case.vocab,
        "grad_checkpointing": format!("{:?}", case.checkpointing),
        "median_step_s": median, "tokens_per_s": tokens / median, "step_s": times,
        "losses": losses, "finite": losses.iter().all(|l| l.is_finite()),
        "model_in_use_mib": ready.map(|u| mib(u.bytes_in_use)),
        "peak_in_use_mib": after.map(|_| mib(peak)),
        "reserved_after_steps_mib": after.map(|u| mib(u.bytes_reserved)),
    })
}

/// The markdown row of one result.
pub fn row(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
    format!(
        "| {} | {} | {} × {} | {} | {:.3} | {:.0} | {} | {} | {} |\n",
        r["case"].as_str().unwrap_or(""),
        r["layers"],
        r["batch"],
        r["seq"],
        r["grad_checkpointing"].as_str().unwrap_or(""),
        r["median_step_s"].as_f64().unwrap_or(f64::NAN),
        r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        f("model_in_use_mib"),
        f("peak_in_use_mib"),
        f("reserved_after_steps_mib"),
    )
}

/// The table's header.
pub const HEADER: &str = "| case | layers | batch × seq | checkpointing | median step s | tokens/s | \
                          model MiB | peak in use MiB | reserved after steps MiB |\n|---|---|---|---|---|---|---|---|---|\n";
