//! Peak memory of loading the default model (SmolLM2-135M-Instruct, GGUF Q4_1) with its block
//! linears quantized to NF4 + double quantization while loading.
//!
//! `cargo run --release --example load_memory` (fetches the model on first use; an example
//! rather than a bench target so that it reuses the release build of the tests). Prints the process's
//! peak RSS (VmHWM) before and after loading, the model's resident size, the largest dense
//! tensor, and the bound `NF4 model + largest dense tensor + 150 MB`.

use burn::tensor::Device;
use burn_qlora::llama::{GgufModel, LlamaForCausalLM, WeightSource, default_model};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{AdaptedLinear, LoraApplier, LoraModel};

#[allow(dead_code)]
mod common;

fn main() {
    let path = default_model().expect("default model");
    let device = Device::flex();
    // Warm the runtime with a tiny op so its own allocations are in the baseline.
    let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
    let before = common::peak_rss_mib();
    let t = std::time::Instant::now();
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let model = LlamaForCausalLM::load(&path, &applier).expect("load");
    let secs = t.elapsed().as_secs_f64();
    let after = common::peak_rss_mib();

    let mut nf4_bytes = 0usize;
    let mut float_bytes = 4 * model
        .model
        .embed_tokens
        .weight
        .dims()
        .iter()
        .product::<usize>();
    for (_, l) in model.linears() {
        match l {
            AdaptedLinear::QLora(q) => nf4_bytes += q.base.to_quantized().storage_bytes(),
            other => float_bytes += 4 * other.in_features() * other.out_features(),
        }
    }
    let c = &model.config;
    float_bytes += 4 * c.hidden_size * (2 * c.num_hidden_layers + 1);
    let gguf = GgufModel::open(&path).expect("gguf");
    let largest = gguf
        .file
        .tensors
        .values()
        .map(|t| 4 * t.numel())
        .max()
        .unwrap_or(0);
    let _ = gguf.contains("model.norm.weight");
    let mb = |b: usize| b as f64 / (1024.0 * 1024.0);
    let model_mb = mb(nf4_bytes + float_bytes);
    let bound = model_mb + mb(largest) + 150.0;
    let growth = after - before;
    println!("| quantity | MiB |");
    println!("|---|---:|");
    println!("| peak RSS before loading | {before:.1} |");
    println!("| peak RSS after loading | {after:.1} |");
    println!("| growth of peak RSS by loading | {growth:.1} |");
    println!("| model as held: NF4 linears | {:.1} |", mb(nf4_bytes));
    println!(
        "| model as held: float embeddings + norms | {:.1} |",
        mb(float_bytes)
    );
    println!("| largest dense tensor (f32) | {:.1} |", mb(largest));
    println!("| bound: model + largest dense + 150 MiB | {bound:.1} |");
    println!(
        "\nload time {secs:.2} s; peak RSS {after:.1} MiB {} the bound",
        if after <= bound { "within" } else { "OVER" }
    );
    drop(model);
}
