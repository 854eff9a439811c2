//! `finetune`'s adapter options: the ids `--trainable-tokens` names, training on from a PEFT
//! adapter folder (`--adapter`), and `--save-as-lora`.

use burn_qlora::llama::{LlamaForCausalLM, LlamaTokenizer};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{
    AdaptedLinear, AdapterDtype, InitLoraWeights, LoraApplier, LoraConfig, LoraModel, PeftAdapter,
    QLoraLinear, TrainableTokenIndices,
};

/// The ids of `--trainable-tokens`: each a token of the tokenizer or an id below its size.
pub fn trainable_token_ids(
    tokens: &[String],
    tok: &LlamaTokenizer,
) -> Result<Option<TrainableTokenIndices>, String> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::new();
    for t in tokens {
        let id = match (tok.token_id(t), t.parse::<usize>()) {
            (Some(id), _) => id as usize,
            (None, Ok(id)) if id < tok.vocab_size() => id,
            _ => {
                return Err(format!(
                    "--trainable-tokens: `{t}` is neither a token of the tokenizer nor an id \
                     below its {} tokens",
                    tok.vocab_size()
                ));
            }
        };
        if ids.contains(&id) {
            return Err(format!(
                "--trainable-tokens: `{t}` (id {id}) is given twice"
            ));
        }
        ids.push(id);
    }
    Ok(Some(TrainableTokenIndices::List(ids)))
}

/// The model (its base quantized by `quant`, or float) with the PEFT adapter in `dir` as its trainable adapter `default`, the
/// adapter's config (set to training) and the precision its file was in. Errors name the
/// folder: a module of the adapter that the model lacks, a shape that does not fit, or a
/// module of `modules_to_save` whose trained weights the file does not hold (training would
/// otherwise start it from the base weights, a run that is partly fresh).
pub fn load_with_adapter(
    model_path: &std::path::Path,
    dir: &std::path::Path,
    quant: Option<QuantConfig>,
    device: &burn::tensor::Device,
) -> Result<(LlamaForCausalLM, LoraConfig, AdapterDtype), Box<dyn std::error::Error>> {
    let peft = PeftAdapter::load(dir, device)?;
    for m in peft.config.modules_to_save.iter().flatten() {
        let held = peft.saved.keys().any(|k| {
            k.rsplit_once('.')
                .is_some_and(|(module, _)| module == m || module.ends_with(&format!(".{m}")))
        });
        if !held {
            return Err(format!(
                "--adapter {}: adapter_config.json lists `{m}` in modules_to_save, but \
                 adapter_model.safetensors holds no trained weights for it",
                dir.display()
            )
            .into());
        }
    }
    // A PiSSA or LoftQ adapter sits on the base its initialisation made from the float weight:
    // the model is loaded in float, the initialisation runs again as the adapter is loaded (as
    // PEFT does), and the base is quantized after, as QLoRA + PiSSA/LoftQ quantizes it.
    let weight_aware = matches!(
        peft.config.init_lora_weights,
        InitLoraWeights::Pissa { .. } | InitLoraWeights::Loftq { .. }
    );
    let applier = LoraApplier::base_only(if weight_aware { None } else { quant }, device);
    let mut model = LlamaForCausalLM::load(model_path, &applier)?;
    model.load_adapter(&peft, "default")?;
    if let (true, Some(q)) = (weight_aware, quant) {
        for (path, layer) in model.linears_mut() {
            let float = std::mem::replace(layer, AdaptedLinear::Frozen(placeholder(device)));
            *layer = match float {
                AdaptedLinear::Frozen(l) => {
                    AdaptedLinear::QLora(QLoraLinear::quantize(&path, l, q)?)
                }
                AdaptedLinear::Lora(l) => AdaptedLinear::QLora(QLoraLinear {
                    lora: l.lora,
                    ..QLoraLinear::quantize(&path, l.base, q)?
                }),
                other => other,
            };
        }
    }
    let lora = LoraConfig {
        inference_mode: false,
        ..peft.config.clone()
    };
    Ok((model, lora, peft.dtype))
}

/// A 1 × 1 linear, held for the moment a layer is moved out to be quantized.
fn placeholder(device: &burn::tensor::Device) -> burn::nn::Linear {
    burn::nn::LinearConfig::new(1, 1).init(device)
}

/// `--save-dtype`'s values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SaveDtype {
    F32,
    F16,
    Bf16,
}

impl From<SaveDtype> for AdapterDtype {
    fn from(d: SaveDtype) -> Self {
        match d {
            SaveDtype::F32 => AdapterDtype::F32,
            SaveDtype::F16 => AdapterDtype::F16,
            SaveDtype::Bf16 => AdapterDtype::BF16,
        }
    }
}

/// `--save-as-lora` needs a PiSSA start: an error naming the option otherwise (before any work).
pub fn check_save_as_lora(init: InitLoraWeights) -> Result<(), String> {
    if matches!(init, InitLoraWeights::Pissa { .. }) {
        return Ok(());
    }
    Err(format!(
        "--save-as-lora converts a PiSSA adapter (--init-lora-weights pissa or pissa_niter_K); \
         this run's adapters start as {init:?}"
    ))
}

/// `--save-as-lora`: the trained PiSSA adapter converted to plain LoRA on the original weights
/// ([`PeftAdapter::converted_to_lora`] against its start `initial`), written to
/// `<out>/adapter-lora`; returns the line to print.
pub fn save_as_lora(
    trained: &PeftAdapter,
    initial: &PeftAdapter,
    out: &std::path::Path,
    dtype: AdapterDtype,
    quant: Option<QuantConfig>,
) -> Result<String, Box<dyn std::error::Error>> {
    let dir = out.join("adapter-lora");
    let lora = trained.converted_to_lora(initial)?;
    let rank = lora.config.r;
    lora.with_dtype(dtype).save(&dir)?;
    Ok(format!(
        "adapter as plain LoRA on the original weights (rank {rank}): {}{}",
        dir.display(),
        if quant.is_some() {
            " (near, not exact: the 4-bit base rounds the residual, not the original weight)"
        } else {
            ""
        }
    ))
}
