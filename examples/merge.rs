//! Merges a LoRA adapter into its base model and writes a plain HF model folder.
//!
//! `cargo run --release --example merge -- --adapter runs/finetune/adapter` merges the adapter
//! `finetune` wrote into SmolLM2-135M-Instruct (the default model) and writes
//! `runs/merged/` (`config.json`, `model.safetensors`, and the tokenizer: a HF base's files,
//! `chat_template.jinja` included, or a GGUF base's vocabulary, byte-level BPE or SentencePiece,
//! written as `tokenizer.json` + `tokenizer_config.json` + `chat_template.jinja`, so that
//! transformers and `generate` read the merged folder with the base's tokens and template). The base is loaded in f32, so the merge itself adds no rounding; with
//! `--format bnb-nf4` the merged weights are quantized to NF4 + double quantization afterwards.
//! `--format gguf-lora --out adapter.gguf` merges nothing: it writes the adapter as llama.cpp's
//! GGUF LoRA adapter (as `convert_lora_to_gguf.py` does), for `llama-cli -m base.gguf --lora`.
//! `--format gguf --out merged.gguf` writes the merged model as a llama.cpp GGUF model file (as
//! `convert_hf_to_gguf.py` writes one, with the base's tokenizer), for `llama-cli -m`.
//! `--help` lists every option.

use std::path::{Path, PathBuf};

use burn_qlora::llama::{
    GgmlType, GgufModel, LlamaConfig, LlamaForCausalLM, LlamaTokenizer, SaveFormat, TokenizerFiles,
    save_gguf_lora,
};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{LoraApplier, LoraModel, PeftAdapter};
use clap::{Parser, ValueEnum};

#[allow(dead_code)]
mod common;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Every tensor f32.
    HfF32,
    /// Every tensor bf16.
    HfBf16,
    /// Block linears in bnb-4bit NF4 with double quantization, the rest f32.
    BnbNf4,
    /// Not a merge: the adapter alone as llama.cpp's GGUF LoRA adapter (`llama-cli --lora`),
    /// as its `convert_lora_to_gguf.py` writes one, to `--out` (a `.gguf` file); tensors as
    /// `--gguf-type`.
    GgufLora,
    /// The merged model as a llama.cpp GGUF model file (as `convert_hf_to_gguf.py` writes one,
    /// the base's tokenizer included) to `--out` (a `.gguf` file); matrices as `--gguf-type`,
    /// vectors f32. LLaMA, Mistral, Qwen2 and Qwen3 bases.
    Gguf,
}

/// Tensor type of a GGUF file (`convert_lora_to_gguf.py` / `convert_hf_to_gguf.py --outtype`).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum GgufType {
    F32,
    F16,
    Bf16,
    /// 8-bit blocks; tensors whose rows are no multiple of 32 long (`lora_b`) are F16.
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Parser, Debug)]
#[command(about = "Merge a PEFT LoRA adapter into its base model and save it as a HF folder")]
struct Args {
    /// Base model: a HF folder, a bnb-4bit folder or a .gguf file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The PEFT adapter folder to merge.
    #[arg(long, default_value = "runs/finetune/adapter")]
    adapter: PathBuf,
    /// Output folder (a `.gguf` file with `--format gguf-lora`).
    #[arg(long, default_value = "runs/merged")]
    out: PathBuf,
    /// Storage of the merged model.
    #[arg(long, value_enum, default_value = "hf-f32")]
    format: Format,
    /// Tensor type of `--format gguf-lora` and `gguf` (f32 is the adapter converter's default).
    #[arg(long, value_enum, default_value = "f32")]
    gguf_type: GgufType,
}

fn main() {
    common::exit_on_error(run(Args::parse()));
}

/// Copies the tokenizer files of a HF base folder next to the merged weights, or writes a GGUF
/// base's tokenizer as HF files.
fn copy_tokenizer(model: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if !model.is_dir() {
        let tok = LlamaTokenizer::load(model)?;
        tok.save_dir(out)?;
        return Ok(());
    }
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let src = model.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            burn_qlora::nn::write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = burn::tensor::Device::flex();
    let model_path = common::model_path(&args.model)?;
    common::check_exists(&args.adapter, "--adapter")?;
    let adapter = PeftAdapter::load(&args.adapter, &device)?;
    if let Format::GgufLora = args.format {
        return gguf_lora(&args, &model_path, &adapter);
    }
    if matches!(args.format, Format::Gguf) {
        if args.out.is_dir() {
            return Err(format!(
                "--out {}: a folder; --format gguf writes one .gguf file",
                args.out.display()
            )
            .into());
        }
        // What the GGUF writer refuses (family, type, tokenizer) is said before the merge.
        let config = base_config(&model_path)?;
        LlamaForCausalLM::check_gguf_export(
            &config,
            &args.out,
            ggml_type(args.gguf_type),
            &model_path,
        )?;
    }
    if !model_path.is_dir() {
        // A GGUF base's vocabulary is read before any work: a bad one stops here, not after
        // the merge.
        LlamaTokenizer::load(&model_path)?;
    }
    let mut model = LlamaForCausalLM::load(&model_path, &LoraApplier::base_only(None, &device))?;
    model.load_adapter(&adapter, "default")?;
    let merged = model.merge_and_unload();
    let format = match args.format {
        Format::HfF32 => SaveFormat::F32,
        Format::HfBf16 => SaveFormat::BF16,
        Format::BnbNf4 => SaveFormat::Bnb4(QuantConfig::qlora()),
        Format::GgufLora => unreachable!("written above"),
        Format::Gguf => {
            let name = model_path
                .file_stem()
                .map_or_else(|| "merged".into(), |n| n.to_string_lossy().to_string());
            merged.save_gguf(&args.out, ggml_type(args.gguf_type), &model_path, &name)?;
            println!(
                "merged {} ({} modules) into {} -> {} (GGUF, {:?})",
                args.adapter.display(),
                adapter.modules.len(),
                model_path.display(),
                args.out.display(),
                args.gguf_type
            );
            return Ok(());
        }
    };
    merged.save_hf(&args.out, format)?;
    copy_tokenizer(&model_path, &args.out)?;
    println!(
        "merged {} ({} modules) into {} -> {} ({:?})",
        args.adapter.display(),
        adapter.modules.len(),
        model_path.display(),
        args.out.display(),
        args.format
    );
    Ok(())
}

/// `--format gguf-lora`: the adapter as llama.cpp's GGUF LoRA adapter, for the base's config.
fn gguf_lora(
    args: &Args,
    model_path: &Path,
    adapter: &PeftAdapter,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = base_config(model_path)?;
    if args.out.is_dir() {
        return Err(format!(
            "--out {}: a folder; --format gguf-lora writes one .gguf file",
            args.out.display()
        )
        .into());
    }
    save_gguf_lora(adapter, &config, ggml_type(args.gguf_type), &args.out)?;
    println!(
        "wrote {} ({} modules, {:?}) as a GGUF LoRA adapter for llama.cpp -> {}",
        args.adapter.display(),
        adapter.modules.len(),
        args.gguf_type,
        args.out.display()
    );
    Ok(())
}

fn ggml_type(t: GgufType) -> GgmlType {
    match t {
        GgufType::F32 => GgmlType::F32,
        GgufType::F16 => GgmlType::F16,
        GgufType::Bf16 => GgmlType::BF16,
        GgufType::Q8_0 => GgmlType::Q8_0,
    }
}

/// The base's config: a HF folder's `config.json` or a GGUF file's metadata.
fn base_config(model_path: &Path) -> Result<LlamaConfig, Box<dyn std::error::Error>> {
    Ok(if model_path.is_dir() {
        LlamaConfig::load(model_path.join("config.json"))?
    } else {
        GgufModel::open(model_path)?.config().clone()
    })
}
