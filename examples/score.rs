//! Scores a model, with or without an adapter: the mean loss and the perplexity on a data file
//! (the formats of `finetune`, the loss on the tokens it would train) or on token ids, and the
//! logits written out for comparison with another implementation.
//!
//! Bare, `cargo run --release --example score` scores the default model on the bundled
//! conversations. `--model M --data chat.jsonl` reads the data with the
//! model's tokenizer; `--ids batch.safetensors` takes the `input_ids` tensor (`[B, T]`, int64;
//! other tensors ignored) and needs no tokenizer, every position after the first a target;
//! `--logits out.safetensors` (with `--ids`) writes the logits `[B, T, V]` as f32 tensor
//! `logits`. The loss is the token-weighted mean of `−log p(target)` in f64 over every target
//! (`IGNORE_INDEX` labels left out), as transformers' causal-LM loss averages a batch; the
//! perplexity is its `exp`. One line on stdout: `mean_loss L perplexity P tokens N`.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use burn_qlora::llama::{LlamaForCausalLM, LlamaTokenizer, TokenizerFiles};
use burn_qlora::nf4::{QuantConfig, QuantType};
use burn_qlora::nn::{IGNORE_INDEX, LoraApplier, LoraModel, PeftAdapter};
use burn_qlora::train::load_dataset;
use clap::{Parser, ValueEnum};
use safetensors::{Dtype, SafeTensors};

#[allow(dead_code)]
mod common;

/// How the base weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Quantize {
    /// NF4 + double quantization (the QLoRA base).
    Nf4,
    /// FP4 + double quantization.
    Fp4,
    /// The checkpoint's weights as f32 (a bnb-4bit folder is dequantized to f32).
    None,
}

#[derive(Parser, Debug)]
#[command(about = "Mean loss and perplexity of a model (and adapter) on data or token ids")]
struct Args {
    /// Model: a HF folder, a bnb-4bit folder or a .gguf file (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Base weights: nf4, fp4 or none (f32; a bnb-4bit folder dequantized). A bnb-4bit folder
    /// keeps its own codes under its own type; another type is refused.
    #[arg(long, value_enum, default_value = "none")]
    quantize: Quantize,
    /// Compute type, as finetune's --compute-dtype: f32; bf16 (bf16 operands, f32
    /// accumulation, on the CPU's AMX or AVX512-BF16; an error on a CPU with neither or on a
    /// GPU); auto (bf16 where the CPU has AMX, else f32). The line printed says which ran.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: common::compute::ComputeDtype,
    /// A data file (.jsonl, .json or .txt, each also .gz), as `finetune` reads it (default,
    /// without --ids: the bundled chitchat conversations).
    #[arg(long, conflicts_with = "ids")]
    data: Option<PathBuf>,
    /// The chat template for chat data and prompts: `chatml`, or a Jinja template file
    /// (default: the model's own; a model without one refuses chat data, as transformers does).
    #[arg(long, conflicts_with = "ids")]
    chat_template: Option<String>,
    /// The data's form, field names, trained tokens and split, as `finetune` reads them (not
    /// with --ids).
    #[command(flatten)]
    data_args: common::data::DataArgs,
    /// Longest sample in tokens, longer ones cut (not with --ids; at least 2).
    #[arg(long, default_value_t = 2048, value_parser = common::args::seq_len, conflicts_with = "ids")]
    seq_len: usize,
    /// A safetensors file whose `input_ids` tensor ([B, T], int64) is scored.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Write the logits [B, T, V] (f32, tensor `logits`) here (with --ids).
    #[arg(long, requires = "ids")]
    logits: Option<PathBuf>,
    /// auto, flex, cpu, wgpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn main() {
    common::exit_on_error(run(Args::parse()));
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = common::device(&args.device)?;
    // On stderr: stdout is the score line (or nothing but it).
    eprintln!(
        "{}",
        common::compute::apply_compute_dtype(args.dtype, &device, "--dtype")?
    );
    let model_path = common::model_path(&args.model)?;
    let quant = match args.quantize {
        Quantize::Nf4 => Some(QuantConfig::qlora()),
        Quantize::Fp4 => Some(QuantConfig {
            quant_type: QuantType::Fp4,
            ..QuantConfig::qlora()
        }),
        Quantize::None => None,
    };
    if let (Some(q), Some((kind, _))) = (quant, common::bnb_4bit_of(&model_path)?)
        && q.quant_type.as_str() != kind
    {
        return Err(format!(
            "--quantize {}: {} is a bnb-4bit folder of type {kind}, whose codes are kept as they \
             are (re-quantizing would round rounded values): use --quantize {kind}, or none for \
             f32",
            q.quant_type.as_str(),
            model_path.display()
        )
        .into());
    }
    // Read the inputs before the model: a bad file fails before minutes of loading.
    if args.ids.is_some() && !args.data_args.is_default() {
        return Err(
            "--ids scores token ids: the data options (--format, --columns, \
                    --train-on-inputs, --split, ...) read a --data file"
                .into(),
        );
    }
    let batch = match &args.ids {
        Some(ids) => Batch::Ids(read_ids(ids)?),
        None => {
            let data = &common::data_path(&args.data)?;
            let mut tok = LlamaTokenizer::load(&model_path)?;
            common::apply_chat_template_option(&mut tok, &args.chat_template)?;
            let opts = args.data_args.options(args.seq_len)?;
            let (samples, report) = load_dataset(data, &tok, &opts)?;
            if report.truncated > 0 {
                eprintln!(
                    "{} of {} samples cut to --seq-len {}",
                    report.truncated,
                    samples.len(),
                    args.seq_len
                );
            }
            Batch::Samples(
                samples
                    .into_iter()
                    .map(|s| (s.input_ids, s.labels))
                    .collect(),
            )
        }
    };
    let mut model = LlamaForCausalLM::load(&model_path, &LoraApplier::base_only(quant, &device))?;
    if let Some(dir) = &args.adapter {
        common::check_exists(dir, "--adapter")?;
        model.load_adapter(&PeftAdapter::load(dir, &device)?, "default")?;
    }

    let mut total = Total::default();
    match batch {
        Batch::Ids(ids) => {
            let flat: Vec<u32> = ids.values.iter().map(|&t| t as u32).collect();
            model.check_token_ids(&flat, "`input_ids`")?;
            let [b, t] = ids.shape;
            let v = model.config.vocab_size;
            // Row by row: one row's logits `[T, V]` in memory at a time (a 2048-token row of a
            // 150k vocabulary is 1.2 GB), written to --logits as they come.
            let mut out = match &args.logits {
                Some(path) => Some(LogitsWriter::create(path, [b, t, v])?),
                None => None,
            };
            for row in 0..b {
                let labels = &ids.values[row * t..][..t];
                let input =
                    Tensor::<2, Int>::from_data(TensorData::new(labels.to_vec(), [1, t]), &device);
                let values = host(model.forward(input, None));
                assert_eq!(values.len(), t * v, "logits of one row are [T, vocab_size]");
                total.add(&values, labels, v);
                if let Some(w) = out.as_mut() {
                    w.write_row(&values)?;
                }
            }
            if let Some(w) = out {
                w.finish()?;
            }
        }
        Batch::Samples(samples) => {
            for (input_ids, labels) in samples {
                model.check_token_ids(&input_ids, "the data's tokens")?;
                let t = input_ids.len();
                let ids: Vec<i64> = input_ids.iter().map(|&x| x as i64).collect();
                let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
                let logits = model.forward(input, None);
                let v = logits.dims()[2];
                total.add(&host(logits), &labels, v);
            }
        }
    }
    if total.tokens == 0 {
        return Err("nothing to score: no position has a target".into());
    }
    let mean = total.nll / total.tokens as f64;
    println!(
        "mean_loss {mean:.7} perplexity {:.7} tokens {}",
        mean.exp(),
        total.tokens
    );
    Ok(())
}

/// What is scored.
enum Batch {
    /// A `[B, T]` batch of ids, every later position a target.
    Ids(Ids),
    /// Samples of a data file: ids and labels ([`IGNORE_INDEX`] where the loss does not count).
    Samples(Vec<(Vec<u32>, Vec<i64>)>),
}

/// The `input_ids` of a safetensors file.
struct Ids {
    values: Vec<i64>,
    shape: [usize; 2],
}

/// `input_ids` of `path`: int64, `[B, T]` with `T ≥ 2`, ids not negative.
fn read_ids(path: &Path) -> Result<Ids, String> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("--ids {name}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("--ids {name}: not a safetensors file: {e}"))?;
    let t = st
        .tensor("input_ids")
        .map_err(|_| format!("--ids {name}: no `input_ids` tensor"))?;
    let (dtype, shape) = (t.dtype(), t.shape().to_vec());
    let [b, len] = shape[..] else {
        return Err(format!(
            "--ids {name}: `input_ids` is {shape:?}, expected [batch, length]"
        ));
    };
    if dtype != Dtype::I64 {
        return Err(format!(
            "--ids {name}: `input_ids` is {dtype:?}, expected I64"
        ));
    }
    if b == 0 || len < 2 {
        return Err(format!(
            "--ids {name}: `input_ids` is [{b}, {len}]: at least one row of two tokens is needed"
        ));
    }
    let values: Vec<i64> = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if let Some(bad) = values.iter().find(|&&x| x < 0 || x > u32::MAX as i64) {
        return Err(format!(
            "--ids {name}: token id {bad} is not a vocabulary index"
        ));
    }
    Ok(Ids {
        values,
        shape: [b, len],
    })
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 logits")
}

/// `−log p` summed over targets, and their count.
#[derive(Default)]
struct Total {
    nll: f64,
    tokens: usize,
}

impl Total {
    /// One sequence: `logits` `[t, v]`, `labels` `[t]`; position `i` predicts `labels[i + 1]`.
    fn add(&mut self, logits: &[f32], labels: &[i64], v: usize) {
        for (i, &target) in labels.iter().enumerate().skip(1) {
            if target == IGNORE_INDEX {
                continue;
            }
            let row = &logits[(i - 1) * v..][..v];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            self.nll += lse - row[target as usize] as f64;
            self.tokens += 1;
        }
    }
}

/// `logits` `[b, t, v]` as the f32 tensor `logits` of a safetensors file.
/// A safetensors file holding one f32 tensor `logits` `[B, T, V]`, written one row at a time
/// (the header first: its size is known from the shape).
struct LogitsWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl LogitsWriter {
    fn create(path: &Path, shape: [usize; 3]) -> Result<Self, String> {
        use std::io::Write;
        let bad = |e: std::io::Error| format!("--logits {}: {e}", path.display());
        let bytes = shape.iter().product::<usize>() * 4;
        let mut header = serde_json::json!({
            "logits": {"dtype": "F32", "shape": shape, "data_offsets": [0, bytes]}
        })
        .to_string();
        // safetensors pads the header with spaces to a multiple of 8 bytes.
        while !header.len().is_multiple_of(8) {
            header.push(' ');
        }
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(bad)?);
        file.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(bad)?;
        file.write_all(header.as_bytes()).map_err(bad)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write_row(&mut self, values: &[f32]) -> Result<(), String> {
        use std::io::Write;
        for x in values {
            self.file
                .write_all(&x.to_le_bytes())
                .map_err(|e| format!("--logits {}: {e}", self.path.display()))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        use std::io::Write;
        self.file
            .flush()
            .map_err(|e| format!("--logits {}: {e}", self.path.display()))
    }
}
