//! A user-defined Burn model made a `LoraModel` with a two-method impl: a PEFT adapter that
//! PEFT made for the same PyTorch model loads onto it and gives PEFT's outputs, and the folder
//! it saves is PEFT's (same keys, shapes, dtypes and values); `examples/own_model.rs` trains,
//! saves and reloads one.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use burn_qlora::nn::{AdaptedLinear, LoraApplier, LoraModel, ModuleKind, PeftAdapter};

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

/// The MLP of `examples/own_model.rs` (and of the script that made the fixture).
#[derive(Module, Debug)]
struct Mlp {
    fc1: AdaptedLinear,
    fc2: AdaptedLinear,
    out: AdaptedLinear,
}

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
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.fc1.forward(x).tanh();
        let h = self.fc2.forward(h).tanh();
        self.out.forward(h)
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/own-model")
}

fn read(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The float base of the fixture, every linear frozen.
fn base_model(device: &Device) -> Mlp {
    let tensors = read(&fixtures().join("base.safetensors"));
    let get = |name: &str| {
        let (_, shape, values) = tensors.iter().find(|(n, _, _)| n == name).unwrap();
        TensorData::new(values.clone(), shape.clone())
    };
    let applier = LoraApplier::base_only(None, device);
    let linear = |name: &str| {
        // PyTorch's `[out, in]`, Burn's `[in, out]`.
        let w = Tensor::<2>::from_data(get(&format!("{name}.weight")), device).transpose();
        let b = Tensor::<1>::from_data(get(&format!("{name}.bias")), device);
        let base = Linear {
            weight: Param::from_tensor(w),
            bias: Some(Param::from_tensor(b)),
        };
        let kind = if name == "out" {
            ModuleKind::OutputHead
        } else {
            ModuleKind::Linear
        };
        applier.linear(name, base, kind).unwrap()
    };
    Mlp {
        fc1: linear("fc1"),
        fc2: linear("fc2"),
        out: linear("out"),
    }
}

#[test]
fn a_peft_made_adapter_of_a_custom_model_gives_peft_outputs() {
    let device = Device::flex();
    let mut model = base_model(&device);
    let peft = PeftAdapter::load(fixtures().join("peft-adapter"), &device).unwrap();
    model.load_adapter(&peft, "default").unwrap();
    let io = read(&fixtures().join("outputs.safetensors"));
    let (x, y) = (&io[0], &io[1]);
    let x = Tensor::<2>::from_data(TensorData::new(x.2.clone(), x.1.clone()), &device);
    let ours = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    qlora_testenv::compare::assert_close(&ours, &y.2, 1e-5, "y vs PEFT's");
    let scale = qlora_testenv::compare::max_abs(&y.2, "PEFT's y");
    // The adapter changes the output: without it the model is the base.
    model.set_adapters_disabled(true);
    let x = Tensor::<2>::from_data(TensorData::new(io[0].2.clone(), io[0].1.clone()), &device);
    let plain = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert!(
        plain
            .iter()
            .zip(&y.2)
            .any(|(a, b)| (a - b).abs() > 1e-3 * scale)
    );
}

#[test]
fn a_custom_model_saves_the_folder_peft_saves() {
    let device = Device::flex();
    let mut model = base_model(&device);
    let src = fixtures().join("peft-adapter");
    let peft = PeftAdapter::load(&src, &device).unwrap();
    model.load_adapter(&peft, "default").unwrap();
    let out = cli::tmp("own-model-save");
    model
        .adapter("default", peft.config.clone())
        .save(&out)
        .unwrap();
    // Same keys, shapes, dtype (F32) and values as PEFT's file.
    assert_eq!(
        read(&out.join("adapter_model.safetensors")),
        read(&src.join("adapter_model.safetensors"))
    );
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    let (ours, theirs) = (json(&out), json(&src));
    for field in [
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "bias",
        "task_type",
    ] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    let set = |v: &serde_json::Value| {
        let mut t: Vec<String> = serde_json::from_value(v["target_modules"].clone()).unwrap();
        t.sort();
        t
    };
    assert_eq!(set(&ours), set(&theirs));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_own_model_example_trains_saves_and_reloads_a_peft_folder() {
    let out = cli::tmp("own-model-example");
    let dir = out.join("adapter");
    let text = cli::ok("own_model", &[dir.to_str().unwrap()]);
    assert!(text.contains("largest output difference 0e0"), "{text}");
    // Its folder has PEFT's keys for the same module names, and loads onto the fixture's base.
    let names = |p: &Path| -> Vec<(String, Vec<usize>)> {
        read(&p.join("adapter_model.safetensors"))
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect()
    };
    assert_eq!(names(&dir), names(&fixtures().join("peft-adapter")));
    let device = Device::flex();
    let mut model = base_model(&device);
    model
        .load_adapter(&PeftAdapter::load(&dir, &device).unwrap(), "default")
        .unwrap();
    let _ = std::fs::remove_dir_all(&out);
}
