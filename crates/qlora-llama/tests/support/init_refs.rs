//! What the adapter-initialisation tests (`pissa.rs`, `loftq.rs`) share: the golden tiny LLaMA,
//! reference tensors made by PEFT, and the parts of an adapted layer as plain vectors (with
//! `support/logits.rs`, which a test declares beside it as `logits`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::LlamaForCausalLM;
use qlora_nf4::QuantConfig;
use qlora_nn::{AdaptedLinear, LoraApplier, LoraConfig, LoraModel};

use crate::logits::values;

/// A path under the workspace's `tests/fixtures`.
pub fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
}

/// The golden tiny LLaMA (fp32 HF folder: 3 layers, hidden 64, ffn 192).
pub fn model_dir() -> PathBuf {
    fixture("golden/families/llama/model")
}

/// The `input_ids` (i64, `[batch, seq]`) of a safetensors fixture, as a tensor on `device`.
pub fn input_ids(p: &str, device: &Device) -> Tensor<2, Int> {
    let bytes = std::fs::read(fixture(p)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (ids, shape) = crate::logits::st_i64s(&st, "input_ids");
    Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
}

/// The f32 tensors of a safetensors fixture by name, with their shapes.
pub fn f32_tensors(p: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(p)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, (t.shape().to_vec(), v))
        })
        .collect()
}

/// The golden tiny LLaMA with `config`'s adapters on `quant`'s base.
pub fn load(config: LoraConfig, quant: Option<QuantConfig>) -> LlamaForCausalLM {
    let applier = LoraApplier::new(config, quant, &Device::flex()).unwrap();
    LlamaForCausalLM::load(model_dir(), &applier).unwrap()
}

/// `(A [r, in], B [out, r], base [out, in])` of a float LoRA layer.
pub fn parts(layer: &AdaptedLinear) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match layer {
        AdaptedLinear::Lora(l) => {
            let a = l.lora.get("default").unwrap();
            (
                values(a.lora_a.val()),
                values(a.lora_b.val()),
                values(l.base.weight.val().transpose()),
            )
        }
        other => panic!("not a float LoRA layer: {other:?}"),
    }
}

/// Every layer's start as one dense `[out, in]` weight: the dequantized base plus `s·B·A`.
pub fn qlora_starts(model: &LlamaForCausalLM) -> HashMap<String, Vec<f32>> {
    model
        .linears()
        .into_iter()
        .map(|(p, l)| match l {
            AdaptedLinear::QLora(q) => (
                p,
                values(q.clone().merge_to_linear().weight.val().transpose()),
            ),
            other => panic!("{p}: not QLoRA: {other:?}"),
        })
        .collect()
}

/// The float weights of the golden tiny LLaMA's linears, `[out, in]`, by path.
pub fn float_weights() -> HashMap<String, Vec<f32>> {
    let applier = LoraApplier::base_only(None, &Device::flex());
    LlamaForCausalLM::load(model_dir(), &applier)
        .unwrap()
        .linears()
        .into_iter()
        .map(|(p, l)| match l {
            AdaptedLinear::Frozen(f) => (p, values(f.weight.val().transpose())),
            other => panic!("{p}: not a frozen float layer: {other:?}"),
        })
        .collect()
}

/// `‖W − X‖_F` summed over the layers (as one Frobenius norm).
pub fn distance(w: &HashMap<String, Vec<f32>>, x: &HashMap<String, Vec<f32>>) -> f64 {
    w.iter()
        .map(|(p, w)| {
            w.iter()
                .zip(&x[p])
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// A and B equal the reference's per singular component up to its sign (A's row and B's
/// column flip together), within `rel` of each matrix's largest value.
pub fn assert_components_match(
    what: &str,
    (a, b): (&[f32], &[f32]),
    (a_ref, b_ref): (&[f32], &[f32]),
    r: usize,
    rel: f32,
) {
    let (inp, out) = (a.len() / r, b.len() / r);
    let (sa, sb) = (max_abs(a_ref), max_abs(b_ref));
    assert!(sa > 0.0 && sb > 0.0, "{what}: an all-zero reference");
    for c in 0..r {
        let dot: f32 = (0..inp).map(|j| a[c * inp + j] * a_ref[c * inp + j]).sum();
        let sign = dot.signum();
        for j in 0..inp {
            let (x, y) = (sign * a[c * inp + j], a_ref[c * inp + j]);
            assert!(
                (x - y).abs() <= rel * sa,
                "{what} lora_A[{c}, {j}]: {x} vs {y}"
            );
        }
        for i in 0..out {
            let (x, y) = (sign * b[i * r + c], b_ref[i * r + c]);
            assert!(
                (x - y).abs() <= rel * sb,
                "{what} lora_B[{i}, {c}]: {x} vs {y}"
            );
        }
    }
}

/// `model`'s adapter `default` saved as a PEFT folder and loaded onto a fresh float model of
/// the original weights, as a user takes a saved adapter.
pub fn saved_and_reloaded(
    model: &LlamaForCausalLM,
    config: &LoraConfig,
    name: &str,
) -> LlamaForCausalLM {
    let dir = std::env::temp_dir().join(format!("qlora-init-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    model.adapter("default", config.clone()).save(&dir).unwrap();
    let device = Device::flex();
    let peft = qlora_nn::PeftAdapter::load(&dir, &device).unwrap();
    let mut fresh =
        LlamaForCausalLM::load(model_dir(), &LoraApplier::base_only(None, &device)).unwrap();
    fresh.load_adapter(&peft, "default").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    fresh
}

/// Every adapted layer's A, B and base equal between two models, bit for bit.
pub fn assert_same_layers(a: &LlamaForCausalLM, b: &LlamaForCausalLM) {
    let (la, lb) = (a.linears(), b.linears());
    assert_eq!(la.len(), lb.len());
    for ((pa, x), (pb, y)) in la.iter().zip(&lb) {
        assert_eq!(pa, pb);
        let (x, y) = (parts(x), parts(y));
        assert_eq!(x.0, y.0, "{pa}: lora_A");
        assert_eq!(x.1, y.1, "{pa}: lora_B");
        assert_eq!(x.2, y.2, "{pa}: the base");
    }
}
