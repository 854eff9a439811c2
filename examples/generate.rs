//! Generates text with a LLaMA-style model, with or without a LoRA adapter (ours or PEFT's).
//!
//! Bare, `cargo run --release --example generate` answers a question with SmolLM2-135M-Instruct
//! (fetched on first use), its linears in NF4 as during QLoRA training. With
//! `--adapter runs/finetune/adapter` it answers with the fine-tuned adapter on top. Tokens are
//! printed as they are produced. `--prompt-ids 1,5,9` starts from token ids instead of text, and
//! `--print-ids` prints the new token ids alone on stdout (space separated): with both, a model
//! folder needs no tokenizer. `--help` lists every option.

use std::io::Write;
use std::path::PathBuf;

use burn_qlora::llama::{
    ChatMessage, GenerationConfig, LlamaForCausalLM, LlamaTokenizer, Sampling, TokenizerFiles,
};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{LoraApplier, LoraModel, PeftAdapter};
use clap::Parser;

#[allow(dead_code)]
mod common;

#[derive(Parser, Debug)]
#[command(about = "Text generation with a LLaMA-style model and an optional PEFT LoRA adapter")]
struct Args {
    /// Model: a HF folder, a bnb-4bit folder or a .gguf file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prompt: raw text, or a user message with --chat (default: a question, as chat).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma separated (`1,5,9`), used as they are (no bos added).
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with_all = ["chat", "system"])]
    prompt_ids: Option<Vec<u32>>,
    /// Print the new token ids, space separated, instead of their text.
    #[arg(long)]
    print_ids: bool,
    /// Do not stop at an end-of-sequence token: generate --max-new-tokens tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long)]
    system: Option<String>,
    /// The chat template for chat data and prompts: `chatml`, or a Jinja template file
    /// (default: the model's own; a model without one refuses chat data, as transformers does).
    #[arg(long)]
    chat_template: Option<String>,
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 128, value_parser = common::args::at_least_1)]
    max_new_tokens: usize,
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    /// Sample with this softmax temperature (above 0).
    #[arg(long, value_parser = common::args::temperature)]
    temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1] (with --temperature; default 0.9).
    #[arg(long, requires = "temperature", value_parser = common::args::mass)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens (0: all; with --temperature).
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    /// Seed of the sampler (with --temperature; default 0).
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
    /// Keep the base weights in float instead of NF4.
    #[arg(long)]
    float_base: bool,
    /// auto, flex, cpu, wgpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute type, as finetune's --compute-dtype: f32; bf16 (bf16 operands, f32
    /// accumulation, on the CPU's AMX or AVX512-BF16; an error on a CPU with neither or on a
    /// GPU); auto (bf16 where the CPU has AMX, else f32). The line printed says which ran.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: common::compute::ComputeDtype,
}

fn main() {
    common::exit_on_error(run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // --greedy and --temperature exclude each other (clap refuses both).
    let sampling = match (args.greedy, args.temperature) {
        (false, Some(temperature)) => Sampling::Sample {
            temperature,
            top_k: args.top_k.unwrap_or(0),
            top_p: args.top_p.unwrap_or(0.9),
            seed: args.seed.unwrap_or(0),
        },
        _ => Sampling::Greedy,
    };
    if args.system.is_some() && args.prompt.is_some() && !args.chat {
        return Err("--system needs --chat (a raw --prompt has no system message)".into());
    }
    let device = common::device(&args.device)?;
    // On stderr: stdout is the generated text or ids.
    eprintln!(
        "{}",
        common::compute::apply_compute_dtype(args.dtype, &device, "--dtype")?
    );
    let model_path = common::model_path(&args.model)?;
    let quant = (!args.float_base).then(QuantConfig::qlora);
    let mut model = LlamaForCausalLM::load(&model_path, &LoraApplier::base_only(quant, &device))?;
    if let Some(dir) = &args.adapter {
        common::check_exists(dir, "--adapter")?;
        model.load_adapter(&PeftAdapter::load(dir, &device)?, "default")?;
    }
    // Ids in and ids out need no tokenizer; text either way does.
    let tok = if args.prompt_ids.is_some() && args.print_ids {
        LlamaTokenizer::load(&model_path).ok()
    } else {
        Some(LlamaTokenizer::load(&model_path)?)
    };
    let mut tok = tok;
    if let Some(t) = tok.as_mut() {
        common::apply_chat_template_option(t, &args.chat_template)?;
    }
    let prompt = match &args.prompt_ids {
        Some(ids) => ids.clone(),
        None => text_prompt(&args, tok.as_ref().expect("loaded for a text prompt"))?,
    };
    if prompt.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    model.check_token_ids(&prompt, "the prompt")?;
    // The model's eos ids (config.json) and the tokenizer's.
    let mut stop_tokens = model.config.eos_token_ids.clone();
    stop_tokens.extend(tok.as_ref().and_then(LlamaTokenizer::eos_id));
    if args.ignore_eos {
        stop_tokens.clear();
    }
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_tokens,
    };

    let started = std::time::Instant::now();
    let mut stdout = std::io::stdout();
    let out = match (&tok, args.print_ids) {
        (Some(tok), false) => {
            // Stream: decode everything so far and print what is new, so multi-token
            // characters come out whole.
            let mut ids = Vec::new();
            let mut printed = 0;
            model.generate(&prompt, &config, |t| {
                ids.push(t);
                if let Ok(s) = tok.decode(&ids, true)
                    && s.len() > printed
                    && s.is_char_boundary(printed)
                {
                    let _ = write!(stdout, "{}", &s[printed..]);
                    let _ = stdout.flush();
                    printed = s.len();
                }
                true
            })
        }
        _ => {
            let out = model.generate(&prompt, &config, |_| true);
            let ids: Vec<String> = out.iter().map(u32::to_string).collect();
            write!(stdout, "{}", ids.join(" "))?;
            out
        }
    };
    let secs = started.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "{} prompt tokens, {} new tokens in {secs:.2} s ({:.1} tokens/s)",
        prompt.len(),
        out.len(),
        out.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The token ids of the text prompt: raw, or as one user message in the chat template.
fn text_prompt(args: &Args, tok: &LlamaTokenizer) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let chat = args.chat || args.prompt.is_none();
    let user = args
        .prompt
        .clone()
        .unwrap_or_else(|| "What is the capital of France?".into());
    if chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", &user));
        // As transformers' `apply_chat_template(tokenize=True)`: the template writes its own
        // bos, so no special token is added.
        return Ok(tok.encode(&tok.apply_chat_template(&messages, true)?, false)?);
    }
    // As transformers' `tokenizer(text)`: the tokenizer's special tokens (Llama 3's bos).
    Ok(tok.encode(&user, true)?)
}
