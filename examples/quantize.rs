//! Quantizes a LLaMA-style model to a bnb-4bit checkpoint that transformers loads.
//!
//! `cargo run --release --example quantize` writes SmolLM2-135M-Instruct (the default model)
//! with its block linears in NF4 + double quantization, blocksize 64, to `runs/quantized/`:
//! `config.json` with the `quantization_config` transformers reads, and `model.safetensors` in
//! the layout `save_pretrained` writes for a model loaded with `load_in_4bit` (the weights
//! `.absmax`, `.quant_map`, `.nested_absmax`, `.nested_quant_map`, `.quant_state.*`).
//!
//! What is bit-exact (README, "What "bit-exact with bitsandbytes" means", each a test): the
//! 4-bit codes, packed bytes, f32 absmax and dequantized values equal bitsandbytes 0.50.2's CPU
//! path, all-zero blocks included (the code of 0.0); with double quantization the offset and
//! nested absmax are equal too, and the 8-bit absmax codes are the exact nearest ones (bnb's CUDA
//! rule), which bnb-CPU's lookup table misses by one step on about 0.25 % of blocks. bnb-CUDA's
//! 4-bit quantizer is not matched bit for bit: it writes code 0 for an all-zero block and its
//! thresholds can sit one ulp from ours. `--help` lists every option.

use std::path::PathBuf;

use burn_qlora::llama::{LlamaForCausalLM, SaveFormat};
use burn_qlora::nf4::{Blocksize, QuantConfig, QuantType};
use burn_qlora::nn::LoraApplier;
use clap::{Parser, ValueEnum};

#[allow(dead_code)]
mod common;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// 4-bit NormalFloat (QLoRA).
    Nf4,
    /// bitsandbytes' 4-bit float.
    Fp4,
}

#[derive(Parser, Debug)]
#[command(about = "Quantize a LLaMA-style model to a bnb-4bit safetensors checkpoint")]
struct Args {
    /// Model: a HF folder or a .gguf file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "runs/quantized")]
    out: PathBuf,
    /// 4-bit data type.
    #[arg(long, value_enum, default_value = "nf4")]
    quant_type: Kind,
    /// Elements per absmax block (a power of two from 32 to 4096) [default: 64; a bnb-4bit
    /// input keeps its own].
    #[arg(long)]
    blocksize: Option<usize>,
    /// Quantize the block scales to 8 bits (double quantization): true or false.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    double_quant: bool,
    /// How double quantization rounds the scales to 8 bits: nearest (bitsandbytes on CUDA) or
    /// cpu-table (bitsandbytes' CPU build, bit for bit).
    #[arg(long, value_enum, default_value = "nearest")]
    absmax_rounding: common::quant::RoundingKind,
}

fn main() {
    common::exit_on_error(run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = QuantConfig {
        quant_type: match args.quant_type {
            Kind::Nf4 => QuantType::Nf4,
            Kind::Fp4 => QuantType::Fp4,
        },
        blocksize: Blocksize::new(args.blocksize.unwrap_or(64), "--blocksize")?,
        double_quant: args.double_quant,
        absmax_rounding: args.absmax_rounding.into(),
    };
    let device = burn::tensor::Device::flex();
    let model_path = common::model_path(&args.model)?;
    // A bnb-4bit input keeps its packed codes: asking for other settings would either be ignored
    // (and the written quantization_config would lie) or re-quantize values already rounded to
    // the 4-bit grid. Both are refused; quantize the float model instead.
    if let Some((kind, dq)) = common::bnb_4bit_of(&model_path)? {
        let refuse = |what: String| -> Result<(), Box<dyn std::error::Error>> {
            Err(format!(
                "{}: already a bnb-4bit folder ({kind}, double quant {dq}); {what}: its 4-bit \
                 codes are kept as they are, so quantize the float model instead",
                model_path.display()
            )
            .into())
        };
        if kind != config.quant_type.as_str() {
            refuse(format!(
                "--quant-type {} asks for another type",
                config.quant_type.as_str()
            ))?;
        }
        if dq != config.double_quant {
            refuse(format!(
                "--double-quant {} asks otherwise",
                config.double_quant
            ))?;
        }
        if let Some(b) = args.blocksize {
            refuse(format!("--blocksize {b} cannot change its blocks"))?;
        }
    }
    let started = std::time::Instant::now();
    // Each linear is quantized as it is read; bnb-4bit inputs keep their own quantization.
    let model =
        LlamaForCausalLM::load(&model_path, &LoraApplier::base_only(Some(config), &device))?;
    model.save_hf(&args.out, SaveFormat::Bnb4(config))?;
    println!(
        "{} -> {} ({}, blocksize {}, double quant {}) in {:.1} s, peak RSS {:.0} MiB",
        model_path.display(),
        args.out.display(),
        config.quant_type.as_str(),
        config.blocksize.get(),
        config.double_quant,
        started.elapsed().as_secs_f64(),
        common::peak_rss_mib()
    );
    Ok(())
}
