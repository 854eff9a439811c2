//! QLoRA on a model of your own (not LLaMA): its linears become frozen NF4 weights with
//! trainable LoRA adapters in a handful of lines, a short `LoraModel` impl gives it PEFT's
//! model-level operations, it trains a few steps, and the adapter is saved in PEFT's format
//! (`adapter_config.json` + `adapter_model.safetensors`) with one call and loaded back. Its
//! hidden layers can be checkpointed as a block (`qlora_nn::checkpoint`: recomputed in the
//! backward pass instead of their activations kept), with the same gradients.
//!
//! ```text
//! cargo run --release --example own_model [OUTPUT_DIR]   # default: own_model_adapter
//! ```

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use burn_qlora::nf4::QuantConfig;
use burn_qlora::nn::{
    AdaptedLinear, LoraApplier, LoraConfig, LoraModel, ModuleKind, ModuleSelector, ParameterCount,
    PeftAdapter, checkpoint,
};

/// A small MLP, written as any Burn model, with `AdaptedLinear` where it had `Linear`.
#[derive(Module, Debug)]
struct Mlp {
    fc1: AdaptedLinear,
    fc2: AdaptedLinear,
    out: AdaptedLinear,
}

/// The module paths PEFT would give these linears (`target_modules` and adapter files use
/// them): all the PEFT operations come with this.
impl LoraModel for Mlp {
    fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
        vec![
            ("fc1".into(), &self.fc1),
            ("fc2".into(), &self.fc2),
            ("out".into(), &self.out),
        ]
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
        vec![
            ("fc1".into(), &mut self.fc1),
            ("fc2".into(), &mut self.fc2),
            ("out".into(), &mut self.out),
        ]
    }
}

impl Mlp {
    /// `x`: `[batch, 32]` → `[batch, 8]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(Self::hidden(self, x))
    }

    /// The same, with the hidden layers a checkpointed block: while training, only their input
    /// is kept, and they are run again in the backward pass.
    fn forward_checkpointed(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(checkpoint(self, x, Self::hidden))
    }

    /// `fc2(fc1(x))` with their activations: `[batch, 32]` → `[batch, 64]`.
    fn hidden(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.fc1.forward(x).tanh();
        self.fc2.forward(h).tanh()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "own_model_adapter".into());
    let device = Device::flex().autodiff();
    device.seed(7);

    // 1. The LoRA config, in PEFT's terms: adapt fc1 and fc2, rank 8, alpha 16.
    let config = LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        target_modules: Some(ModuleSelector::List(vec!["fc1".into(), "fc2".into()])),
        // Not a transformers model: no task type, as PEFT leaves it for a custom module.
        task_type: None,
        ..LoraConfig::default()
    };
    // 2. Build the model through the applier: every base weight NF4 + double quant, frozen.
    let weights = [
        LinearConfig::new(32, 64).init(&device),
        LinearConfig::new(64, 64).init(&device),
        LinearConfig::new(64, 8).init(&device),
    ];
    let build = |applier: &LoraApplier| -> Result<Mlp, Box<dyn std::error::Error>> {
        let [fc1, fc2, out] = weights.clone();
        Ok(Mlp {
            fc1: applier.linear("fc1", fc1, ModuleKind::Linear)?,
            fc2: applier.linear("fc2", fc2, ModuleKind::Linear)?,
            out: applier.linear("out", out, ModuleKind::OutputHead)?,
        })
    };
    let qlora = LoraApplier::new(config.clone(), Some(QuantConfig::qlora()), &device)?;
    let mut model = build(&qlora)?;

    println!("{}", ParameterCount::of(&model));

    // 3. Train a few steps: only the adapters receive gradients.
    let teacher = Tensor::<2>::random([32, 8], Distribution::Normal(0.0, 0.5), &device).detach();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    for step in 0..30 {
        let x = Tensor::<2>::random([64, 32], Distribution::Normal(0.0, 1.0), &device);
        let target = x.clone().matmul(teacher.clone()).tanh().detach();
        let loss = (model.forward(x) - target).powi_scalar(2).mean();
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if step == 0 {
            println!(
                "trainable tensors: {} (lora_A and lora_B of fc1 and fc2)",
                grads.len()
            );
        }
        model = optim.step(3e-3, model, grads);
        if step % 5 == 0 || step == 29 {
            println!("step {step:2}  loss {value:.5}");
        }
    }

    // 4. Checkpointing the hidden layers changes the memory held, not the gradients.
    let x = Tensor::<2>::random([64, 32], Distribution::Normal(0.0, 1.0), &device);
    let grad_of = |forward: fn(&Mlp, Tensor<2>) -> Tensor<2>| {
        let grads = forward(&model, x.clone()).powi_scalar(2).sum().backward();
        let a = &model.fc1.adapter("default").expect("fc1 is adapted").lora_a;
        a.val().grad(&grads).expect("a gradient").into_data()
    };
    let (plain, ckpt) = (grad_of(Mlp::forward), grad_of(Mlp::forward_checkpointed));
    if plain != ckpt {
        return Err("the checkpointed block gives other gradients".into());
    }
    println!("checkpointed hidden layers: the same fc1.lora_A gradient");

    // 5. Save the adapter where PEFT can load it: one call.
    model.adapter("default", config.clone()).save(&out_dir)?;
    println!("adapter saved to {out_dir}/");

    // 6. Load it onto the same base without adapters, as PEFT's `PeftModel.from_pretrained`
    // does: the outputs are the trained model's.
    let mut reloaded = build(&LoraApplier::base_only(Some(QuantConfig::qlora()), &device))?;
    reloaded.load_adapter(&PeftAdapter::load(&out_dir, &device)?, "default")?;
    let x = Tensor::<2>::random([4, 32], Distribution::Normal(0.0, 1.0), &device);
    let diff = (model.forward(x.clone()) - reloaded.forward(x))
        .abs()
        .max()
        .into_scalar::<f32>();
    println!("reloaded from {out_dir}/: largest output difference {diff:e}");
    if diff > 1e-6 {
        return Err(format!("the reloaded adapter gives other outputs ({diff:e})").into());
    }
    Ok(())
}
