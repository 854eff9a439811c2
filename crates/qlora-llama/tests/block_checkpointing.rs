//! Block-level gradient checkpointing (`LlamaForCausalLM::with_gradient_checkpointing`,
//! `qlora_nn::checkpoint`) is the same computation: on an NF4 model with LoRA dropout on every
//! adapter, the loss and every LoRA gradient are bit-identical with and without it, for padded
//! batches and padding-free ones, on the tiny LLaMA and on the families whose blocks differ
//! (Qwen3's q/k norms, Phi-3's fused linears, Mistral's window); and a run that goes on after
//! the step draws the same random numbers (the dropout seeds are replayed, not drawn again).

use std::path::PathBuf;
use std::sync::Mutex;

use burn::nn::DropoutConfig;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use qlora_llama::{LlamaForCausalLM, LoraModel};
use qlora_nf4::QuantConfig;
use qlora_nn::{GradientCheckpointing, LoraApplier, PaddingFreeBatch, PeftAdapter};

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

/// The NF4 model with its PEFT adapter, LoRA dropout 0.1 on every adapter.
fn model(dir: &str, adapter: &str, device: &Device) -> LlamaForCausalLM {
    model_with_dropout(dir, adapter, device, 0.1)
}

fn model_with_dropout(dir: &str, adapter: &str, device: &Device, p: f64) -> LlamaForCausalLM {
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), device);
    let mut model = LlamaForCausalLM::load_hf(golden(dir), &applier).unwrap();
    let adapter = PeftAdapter::load(golden(adapter), device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    for (_, layer) in model.linears_mut() {
        layer
            .adapters_mut()
            .and_then(|a| a.get_mut("default"))
            .unwrap()
            .dropout = DropoutConfig::new(p).init();
    }
    model
}

fn bits(t: Tensor<1>) -> Vec<u32> {
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// The loss's bits, every LoRA gradient's bits (flattened), and the next draw of the device's
/// generator after the step.
type Step = (Vec<u32>, Vec<(String, Vec<u32>)>, Vec<u32>);

/// The device's generator is the process's: one step at a time draws from it.
static GENERATOR: Mutex<()> = Mutex::new(());

fn step(
    model: &LlamaForCausalLM,
    device: &Device,
    loss: impl Fn(&LlamaForCausalLM) -> Tensor<1>,
) -> Step {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(7);
    let loss = loss(model);
    let grads = loss.backward();
    let mut g = Vec::new();
    for (path, layer) in model.linears() {
        let a = layer.adapter("default").unwrap();
        for (n, p) in [("A", &a.lora_a), ("B", &a.lora_b)] {
            let grad = p.val().grad(&grads).expect("a LoRA gradient");
            let n_el = grad.shape().num_elements();
            g.push((format!("{path}.lora_{n}"), bits(grad.reshape([n_el]))));
        }
    }
    let next = bits(Tensor::<1>::random([4], Distribution::Default, device));
    (bits(loss), g, next)
}

fn same(name: &str, plain: Step, ckpt: Step) {
    // Equal bits would also pass on NaN: the plain step must be finite.
    for (what, v) in
        std::iter::once(("loss", &plain.0)).chain(plain.1.iter().map(|(p, g)| (p.as_str(), g)))
    {
        assert!(
            v.iter().all(|b| f32::from_bits(*b).is_finite()),
            "{name}: {what} is not finite"
        );
    }
    assert_eq!(plain.0, ckpt.0, "{name}: the loss differs");
    assert!(!plain.1.is_empty());
    for ((path, a), (_, b)) in plain.1.iter().zip(&ckpt.1) {
        assert!(a == b, "{name}: the gradient of {path} differs");
    }
    assert_eq!(plain.2, ckpt.2, "{name}: the generator moved differently");
}

#[test]
fn checkpointed_padded_step_is_bit_identical_with_dropout() {
    let device = Device::flex().autodiff();
    let plain = model("tiny-llama", "tiny-llama-lora", &device);
    let ckpt = plain
        .clone()
        .with_gradient_checkpointing(GradientCheckpointing::Block);
    assert_eq!(ckpt.gradient_checkpointing(), GradientCheckpointing::Block);
    assert!(!plain.gradient_checkpointing().is_on());
    let (b, t) = (3, 40);
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % 500) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
    let loss = |m: &LlamaForCausalLM| m.loss(ids.clone(), ids.clone());
    // The dropout is on: without it the loss is another.
    let undropped = model_with_dropout("tiny-llama", "tiny-llama-lora", &device, 0.0);
    assert_ne!(
        step(&undropped, &device, loss).0,
        step(&plain, &device, loss).0,
        "the LoRA dropout changes nothing: the test would not see its masks"
    );
    same(
        "tiny-llama",
        step(&plain, &device, loss),
        step(&ckpt, &device, loss),
    );
}

fn padding_free(family: &str) {
    let device = Device::flex().autodiff();
    let dir = format!("families/{family}/model-nf4");
    let plain = model(&dir, &format!("families/{family}/adapter"), &device);
    let ckpt = plain
        .clone()
        .with_gradient_checkpointing(GradientCheckpointing::Block);
    let vocab = plain.config.vocab_size as u32;
    let samples: Vec<(Vec<u32>, Vec<i64>)> = [(19usize, 6usize), (5, 2), (12, 0)]
        .into_iter()
        .enumerate()
        .map(|(s, (n, prompt))| {
            let ids: Vec<u32> = (0..n as u32)
                .map(|i| (i * 31 + 7 * s as u32 + 3) % vocab)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { -100 } else { t as i64 })
                .collect();
            (ids, labels)
        })
        .collect();
    let parts: Vec<(&[u32], &[i64])> = samples
        .iter()
        .map(|(i, l)| (i.as_slice(), l.as_slice()))
        .collect();
    let batch = PaddingFreeBatch::new(&parts, &device);
    let loss = |m: &LlamaForCausalLM| m.loss_padding_free(&batch);
    same(
        family,
        step(&plain, &device, loss),
        step(&ckpt, &device, loss),
    );
}

#[test]
fn checkpointed_padding_free_llama_step_is_bit_identical() {
    padding_free("llama");
}

#[test]
fn checkpointed_padding_free_mistral_step_is_bit_identical() {
    padding_free("mistral");
}

#[test]
fn checkpointed_padding_free_qwen3_step_is_bit_identical() {
    padding_free("qwen3");
}

#[test]
fn checkpointed_padding_free_phi3_step_is_bit_identical() {
    padding_free("phi3");
}

/// Gemma 3's layers norm the MLP's output, so its recomputation runs the whole layer.
#[test]
fn checkpointed_padding_free_gemma3_step_is_bit_identical() {
    padding_free("gemma3");
}

#[test]
fn checkpointing_changes_nothing_off_autodiff() {
    let device = Device::flex();
    let plain = model("tiny-llama", "tiny-llama-lora", &device);
    let ckpt = plain
        .clone()
        .with_gradient_checkpointing(GradientCheckpointing::Block);
    let ids = Tensor::<2, Int>::from_data(TensorData::new((0..24i64).collect(), [2, 12]), &device);
    let (a, b) = (plain.forward(ids.clone(), None), ckpt.forward(ids, None));
    let n = a.shape().num_elements();
    assert_eq!(bits(a.reshape([n])), bits(b.reshape([n])));
}
