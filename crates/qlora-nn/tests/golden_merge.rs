//! Layer-level check against PEFT: the golden adapter loaded onto the golden tiny LLaMA's
//! linears and merged gives the weights PEFT's `merge_and_unload()` saved.

use std::path::PathBuf;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use qlora_nn::{LoraLinear, PeftAdapter};
use safetensors::SafeTensors;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

fn tensor(st: &SafeTensors, name: &str, device: &Device) -> Tensor<2> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::from_data(TensorData::new(v, [t.shape()[0], t.shape()[1]]), device)
}

#[test]
fn merging_the_golden_adapter_gives_peft_merged_weights() {
    let device = Device::flex();
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), &device).unwrap();
    let base = std::fs::read(golden("tiny-llama/model.safetensors")).unwrap();
    let base = SafeTensors::deserialize(&base).unwrap();
    let merged = std::fs::read(golden("tiny-llama-lora-merged/model.safetensors")).unwrap();
    let merged = SafeTensors::deserialize(&merged).unwrap();
    assert_eq!(adapter.modules.len(), 14);
    for (path, weights) in adapter.modules {
        let w = tensor(&base, &format!("{path}.weight"), &device); // [out, in]
        let mut layer = LoraLinear::new(Linear {
            weight: Param::from_tensor(w.transpose()),
            bias: None,
        });
        layer
            .add_adapter(
                "default",
                weights.into_adapter(&adapter.config, &path).unwrap(),
            )
            .unwrap();
        assert_eq!(
            layer.lora.get("default").unwrap().scaling,
            2.0,
            "lora_alpha 16 / r 8"
        );
        let ours = layer.merge_and_unload().weight.val().transpose();
        let want = tensor(&merged, &format!("{path}.weight"), &device);
        let (ours, want) = (
            ours.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap(),
        );
        qlora_testenv::compare::assert_close(&ours, &want, 1e-6, &format!("{path} vs PEFT"));
    }
}

#[test]
fn an_adapter_of_the_wrong_shape_is_an_error() {
    let device = Device::flex();
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), &device).unwrap();
    let q = adapter.modules["model.layers.0.self_attn.q_proj"]
        .clone()
        .into_adapter(&adapter.config, "q")
        .unwrap();
    // k_proj is [in 64, out 32]; the q_proj adapter is [64, 64].
    let base = std::fs::read(golden("tiny-llama/model.safetensors")).unwrap();
    let base = SafeTensors::deserialize(&base).unwrap();
    let w = tensor(&base, "model.layers.0.self_attn.k_proj.weight", &device);
    let mut layer = LoraLinear::new(Linear {
        weight: Param::from_tensor(w.transpose()),
        bias: None,
    });
    let e = layer.add_adapter("default", q).unwrap_err().to_string();
    assert!(
        e.contains("[in 64, out 64]") && e.contains("[in 64, out 32]"),
        "{e}"
    );
}
