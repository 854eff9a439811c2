//! Applying a config while building a model: which layers get adapters, what trains.

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use qlora_backend::QuantConfig;
use qlora_nn::{
    AdaptedLinear, LoraApplier, LoraBias, LoraConfig, ModuleKind, ModuleSelector, ParameterCount,
    PeftAdapter,
};

#[derive(Module, Debug)]
struct Block {
    q: AdaptedLinear,
    v: AdaptedLinear,
    out: AdaptedLinear,
}

#[derive(Module, Debug)]
struct Net {
    blocks: Vec<Block>,
    head: AdaptedLinear,
}

/// Holds the device's random generator for one test: the tests of this file draw from the one
/// generator of the process, so one test's draws between another's `seed` and its `init`
/// would change what that test builds. Every test takes it first.
fn generator() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

fn net(applier: &LoraApplier, device: &Device) -> Net {
    let lin = |i, o| LinearConfig::new(i, o).init(device);
    let blocks = (0..2)
        .map(|b| Block {
            q: applier
                .linear(&format!("blocks.{b}.q"), lin(32, 32), ModuleKind::Linear)
                .unwrap(),
            v: applier
                .linear(&format!("blocks.{b}.v"), lin(32, 32), ModuleKind::Linear)
                .unwrap(),
            out: applier
                .linear(&format!("blocks.{b}.out"), lin(32, 32), ModuleKind::Linear)
                .unwrap(),
        })
        .collect();
    Net {
        blocks,
        head: applier
            .linear("head", lin(32, 10), ModuleKind::OutputHead)
            .unwrap(),
    }
}

impl Net {
    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for b in &self.blocks {
            x = b
                .out
                .forward(b.q.forward(x.clone()) + b.v.forward(x))
                .tanh();
        }
        self.head.forward(x)
    }
}

fn config(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: Some(ModuleSelector::List(
            targets.iter().map(|s| s.to_string()).collect(),
        )),
        ..LoraConfig::default()
    }
}

#[test]
fn qlora_model_trains_only_the_targeted_adapters() {
    let _generator = generator();
    let device = Device::flex().autodiff();
    let applier =
        LoraApplier::new(config(&["q", "v"]), Some(QuantConfig::qlora()), &device).unwrap();
    let n = net(&applier, &device);
    assert!(matches!(n.blocks[0].q, AdaptedLinear::QLora(_)));
    assert!(
        n.blocks[0].q.adapter("default").is_some() && n.blocks[1].v.adapter("default").is_some()
    );
    assert!(
        n.blocks[0].out.adapter("default").is_none(),
        "`out` is not targeted"
    );
    let x = Tensor::<2>::random([3, 32], Distribution::Normal(0.0, 1.0), &device);
    let grads = n.forward(x).sum().backward();
    let params = burn::optim::GradientsParams::from_grads(grads, &n);
    assert_eq!(
        params.len(),
        2 * 4,
        "A and B of q and v in two blocks, nothing else"
    );

    // The adapters save as a PEFT folder under their module paths.
    let layers = [
        ("blocks.0.q", &n.blocks[0].q),
        ("blocks.0.v", &n.blocks[0].v),
        ("blocks.1.q", &n.blocks[1].q),
        ("blocks.1.v", &n.blocks[1].v),
    ];
    let adapter = PeftAdapter::from_adapters(
        applier.config().unwrap().clone(),
        layers
            .iter()
            .map(|(p, l)| (*p, l.adapter("default").unwrap())),
    );
    assert_eq!(adapter.modules.len(), 4);
}

#[test]
fn lora_without_quantization_and_trainable_biases() {
    let _generator = generator();
    let device = Device::flex().autodiff();
    let mut cfg = config(&["q"]);
    cfg.bias = LoraBias::LoraOnly;
    let applier = LoraApplier::new(cfg, None, &device).unwrap();
    let n = net(&applier, &device);
    assert!(matches!(n.blocks[0].q, AdaptedLinear::Lora(_)));
    assert!(matches!(n.blocks[0].v, AdaptedLinear::Frozen(_)));
    let x = Tensor::<2>::random([3, 32], Distribution::Normal(0.0, 1.0), &device);
    let params = burn::optim::GradientsParams::from_grads(n.forward(x).sum().backward(), &n);
    assert_eq!(params.len(), 2 * 3, "A, B and the bias of q in two blocks");
}

#[test]
fn all_linear_skips_the_head() {
    let _generator = generator();
    let device = Device::flex();
    let mut cfg = config(&[]);
    cfg.target_modules = Some(ModuleSelector::Pattern("all-linear".into()));
    let n = net(&LoraApplier::new(cfg, None, &device).unwrap(), &device);
    assert!(n.blocks[1].out.adapter("default").is_some());
    assert!(matches!(n.head, AdaptedLinear::Frozen(_)));
}

#[test]
fn modules_to_save_train_in_full_and_round_trip_through_peft_files() {
    let _generator = generator();
    let device = Device::flex().autodiff();
    let mut cfg = config(&["q"]);
    cfg.modules_to_save = Some(vec!["head".into()]);
    // With an NF4 base too, the saved module stays float and trains in full.
    let applier = LoraApplier::new(cfg.clone(), Some(QuantConfig::qlora()), &device).unwrap();
    let n = net(&applier, &device);
    assert!(matches!(n.head, AdaptedLinear::Trained(_)));
    let x = Tensor::<2>::random([3, 32], Distribution::Normal(0.0, 1.0), &device);
    let grads = burn::optim::GradientsParams::from_grads(n.forward(x).sum().backward(), &n);
    assert_eq!(
        grads.len(),
        2 * 2 + 2,
        "A and B of q in two blocks, the head's weight and bias"
    );

    // Saved next to the adapter under PEFT's keys, [out, in], and read back.
    let mut adapter = PeftAdapter::from_adapters(
        cfg.clone(),
        n.blocks
            .iter()
            .enumerate()
            .map(|(b, blk)| (format!("blocks.{b}.q"), blk.q.adapter("default").unwrap()))
            .collect::<Vec<_>>()
            .iter()
            .map(|(p, a)| (p.as_str(), *a)),
    );
    adapter.saved.extend(n.head.saved_params("head"));
    assert_eq!(adapter.saved["head.weight"].shape().as_slice(), [10, 32]);
    let dir = std::env::temp_dir().join(format!("qlora-mts-{}", std::process::id()));
    adapter.save(&dir).unwrap();
    let back = PeftAdapter::load(&dir, &device).unwrap();
    assert_eq!(back.saved.len(), 2);
    assert_eq!(back.saved["head.bias"], adapter.saved["head.bias"]);
    let restored = AdaptedLinear::Frozen(LinearConfig::new(32, 10).init(&device))
        .with_saved(
            "head",
            back.saved["head.weight"].clone(),
            Some(back.saved["head.bias"].clone()),
        )
        .unwrap();
    let y = Tensor::<2>::random([2, 32], Distribution::Normal(0.0, 1.0), &device);
    let (a, b) = (
        restored
            .forward(y.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
        n.head.forward(y).into_data().try_to_vec::<f32>().unwrap(),
    );
    // The same weights; the matmul may sum in another order over another memory layout.
    assert!(
        a.iter()
            .zip(&b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    );
    // A wrong shape is an error naming the module.
    let e = AdaptedLinear::Frozen(LinearConfig::new(16, 10).init(&device))
        .with_saved("head", back.saved["head.weight"].clone(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("head") && e.contains("[10, 16]"), "{e}");

    // Keys that keep PEFT's wrapper segment (`head.modules_to_save.default.weight`) read too;
    // a full tensor of a module not in modules_to_save is refused by name.
    let st = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = file.tensors();
    for (name, _) in &mut tensors {
        if let Some(p) = name.strip_suffix("head.weight") {
            *name = format!("{p}head.modules_to_save.default.weight");
        }
    }
    let rewritten = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(&st, rewritten).unwrap();
    let wrapped = PeftAdapter::load(&dir, &device).unwrap();
    assert_eq!(wrapped.saved["head.weight"], adapter.saved["head.weight"]);
    let mut cfg2 = cfg.clone();
    cfg2.modules_to_save = Some(vec!["other".into()]);
    std::fs::write(dir.join("adapter_config.json"), cfg2.to_peft_json()).unwrap();
    let e = PeftAdapter::load(&dir, &device).unwrap_err().to_string();
    assert!(
        e.contains("base_model.model.head.") && e.contains("modules_to_save"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parameter_counts_like_peft() {
    let _generator = generator();
    let device = Device::flex().autodiff();
    let applier =
        LoraApplier::new(config(&["q", "v"]), Some(QuantConfig::qlora()), &device).unwrap();
    let n = net(&applier, &device);
    let c = ParameterCount::of(&n);
    // 4 adapters of rank 4 on 32x32: A [4, 32] + B [32, 4].
    assert_eq!(c.trainable, 4 * (4 * 32 + 32 * 4));
    // NF4 weights by element count (6 of 32x32, head 32x10), float biases, adapters.
    assert_eq!(c.total, 6 * 32 * 32 + 32 * 10 + 6 * 32 + 10 + c.trainable);
    assert_eq!(
        c.to_string(),
        format!(
            "trainable params: 1,024 || all params: 7,690 || trainable%: {:.4}",
            100.0 * 1024.0 / 7690.0
        )
    );
    // Without autodiff nothing trains.
    let inference = net(
        &LoraApplier::new(
            config(&["q", "v"]),
            Some(QuantConfig::qlora()),
            &Device::flex(),
        )
        .unwrap(),
        &Device::flex(),
    );
    assert_eq!(
        ParameterCount::of(&inference),
        ParameterCount {
            trainable: 0,
            total: 7690
        }
    );
}

/// Burn draws a `LinearConfig::init` bias lazily, at its first use: the applier gives it its
/// value when the layer is built, so what the device's generator holds at the first forward
/// pass (another step after a resume) does not change the model.
#[test]
fn the_base_is_drawn_when_built_not_at_its_first_use() {
    let _generator = generator();
    let device = Device::flex().autodiff();
    let config = LoraConfig {
        target_modules: Some(ModuleSelector::List(vec!["fc".into()])),
        ..LoraConfig::default()
    };
    for quantize in [None, Some(QuantConfig::qlora())] {
        let applier = LoraApplier::new(config.clone(), quantize, &device).unwrap();
        let built = |first_use_seed: u64| {
            device.seed(3);
            let layer = applier
                .linear(
                    "fc",
                    LinearConfig::new(64, 8).init(&device),
                    ModuleKind::Linear,
                )
                .unwrap();
            device.seed(first_use_seed);
            let x = Tensor::<2>::ones([1, 64], &device);
            layer
                .valid()
                .forward(x)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(built(10), built(20), "quantize: {quantize:?}");
    }
}
