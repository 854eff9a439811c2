//! The golden tiny LLaMA against transformers 5.23 / PEFT 0.21 / bnb 0.50: logits and hidden
//! states of the fp32 model, the bnb NF4 checkpoint, quantize-on-load, the PEFT adapter on both
//! bases, and the merged model.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::{KvCache, LlamaForCausalLM, LoraModel};
use qlora_nf4::QuantConfig;
use qlora_nn::{LoraApplier, PeftAdapter};
use safetensors::SafeTensors;

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn open(name: &str) -> Self {
        Self {
            bytes: std::fs::read(golden(name)).unwrap(),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn f32s(&self, key: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn input_ids(&self, device: &Device) -> Tensor<2, Int> {
        let st = self.st();
        let t = st.tensor("input_ids").unwrap();
        let ids: Vec<i64> = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Tensor::from_data(TensorData::new(ids, [t.shape()[0], t.shape()[1]]), device)
    }
}

#[path = "support/logits.rs"]
mod logits;
use logits::{check, values};

#[test]
fn fp32_logits_and_hidden_states() {
    let device = Device::flex();
    let g = Golden::open("tiny_llama_logits.safetensors");
    let model =
        LlamaForCausalLM::load_hf(golden("tiny-llama"), &LoraApplier::base_only(None, &device))
            .unwrap();
    let ids = g.input_ids(&device);
    let hidden = model.hidden_states(ids.clone(), None, true);
    assert_eq!(hidden.len(), 3);
    for (i, h) in hidden.into_iter().enumerate() {
        check(
            &format!("hidden_states.{i}"),
            values(h),
            &g.f32s(&format!("hidden_states.{i}")),
            1e-5,
        );
    }
    check(
        "logits",
        values(model.forward(ids, None)),
        &g.f32s("logits"),
        1e-5,
    );
}

#[test]
fn bnb_nf4_checkpoint_logits() {
    let device = Device::flex();
    let g = Golden::open("tiny_llama_nf4_logits.safetensors");
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let model = LlamaForCausalLM::load_hf(golden("tiny-llama-nf4"), &applier).unwrap();
    let ids = g.input_ids(&device);
    let hidden = model.hidden_states(ids.clone(), None, true);
    for (i, h) in hidden.into_iter().enumerate() {
        check(
            &format!("hidden_states_nf4.{i}"),
            values(h),
            &g.f32s(&format!("hidden_states_nf4.{i}")),
            1e-5,
        );
    }
    check(
        "logits_nf4",
        values(model.forward(ids, None)),
        &g.f32s("logits_nf4"),
        1e-5,
    );
}

#[test]
fn quantize_on_load_matches_the_bnb_checkpoint() {
    let device = Device::flex();
    let g = Golden::open("tiny_llama_nf4_logits.safetensors");
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let model = LlamaForCausalLM::load_hf(golden("tiny-llama"), &applier).unwrap();
    // 3 of 1,416 double-quant absmax codes differ by one step from bnb-CPU's lookup table
    // (see the golden README's LUT caveat), so the match is close rather than exact.
    check(
        "logits_nf4 (quantized on load)",
        values(model.forward(g.input_ids(&device), None)),
        &g.f32s("logits_nf4"),
        2e-3,
    );
}

#[test]
fn peft_adapter_on_fp32_and_nf4_bases_and_merged() {
    let device = Device::flex();
    let g = Golden::open("tiny_llama_lora_logits.safetensors");
    let ids = g.input_ids(&device);
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), &device).unwrap();

    let mut model =
        LlamaForCausalLM::load_hf(golden("tiny-llama"), &LoraApplier::base_only(None, &device))
            .unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let hidden = model.hidden_states(ids.clone(), None, true);
    for (i, h) in hidden.into_iter().enumerate() {
        check(
            &format!("hidden_states_lora.{i}"),
            values(h),
            &g.f32s(&format!("hidden_states_lora.{i}")),
            1e-5,
        );
    }
    check(
        "logits_lora",
        values(model.forward(ids.clone(), None)),
        &g.f32s("logits_lora"),
        1e-5,
    );

    // Disabling the adapter gives the base model back.
    model.set_adapters_disabled(true);
    let base = Golden::open("tiny_llama_logits.safetensors");
    check(
        "disabled",
        values(model.forward(ids.clone(), None)),
        &base.f32s("logits"),
        1e-5,
    );
    model.set_adapters_disabled(false);

    let merged = model.merge_and_unload();
    check(
        "logits_merged",
        values(merged.forward(ids.clone(), None)),
        &g.f32s("logits_merged"),
        1e-5,
    );

    // The saved merged model loads and gives the same logits.
    let saved = LlamaForCausalLM::load_hf(
        golden("tiny-llama-lora-merged"),
        &LoraApplier::base_only(None, &device),
    )
    .unwrap();
    check(
        "merged checkpoint",
        values(saved.forward(ids.clone(), None)),
        &g.f32s("logits_merged"),
        1e-5,
    );

    let nf4 = Golden::open("tiny_llama_nf4_logits.safetensors");
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let mut qmodel = LlamaForCausalLM::load_hf(golden("tiny-llama-nf4"), &applier).unwrap();
    qmodel.load_adapter(&adapter, "default").unwrap();
    check(
        "logits_nf4_lora",
        values(qmodel.forward(ids, None)),
        &nf4.f32s("logits_nf4_lora"),
        1e-5,
    );
}

#[test]
fn kv_cache_generation_equals_full_recomputation() {
    let device = Device::flex();
    let g = Golden::open("tiny_llama_logits.safetensors");
    let model =
        LlamaForCausalLM::load_hf(golden("tiny-llama"), &LoraApplier::base_only(None, &device))
            .unwrap();
    let ids = g.input_ids(&device);
    let full = values(model.forward(ids.clone(), None));
    // Prefill 10 tokens, then one at a time, then a chunk of 5.
    let mut cache: KvCache = model.new_cache();
    let mut got = values(model.forward(ids.clone().narrow(1, 0, 10), Some(&mut cache)));
    let mut pos = 10;
    while pos < 19 {
        got.extend(values(
            model.forward(ids.clone().narrow(1, pos, 1), Some(&mut cache)),
        ));
        pos += 1;
    }
    got.extend(values(
        model.forward(ids.clone().narrow(1, 19, 5), Some(&mut cache)),
    ));
    assert_eq!(cache.len(), 24);
    // Reorder: chunks are [2, len, vocab]; rebuild per batch row.
    let vocab = 512;
    let mut per_pos: Vec<Vec<f32>> = vec![Vec::new(); 2];
    let mut off = 0;
    for len in [10].into_iter().chain(std::iter::repeat_n(1, 9)).chain([5]) {
        for (b, row) in per_pos.iter_mut().enumerate() {
            let start = off + b * len * vocab;
            row.extend_from_slice(&got[start..start + len * vocab]);
        }
        off += 2 * len * vocab;
    }
    let got: Vec<f32> = per_pos.concat();
    check("cached logits", got, &full, 1e-5);
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-save-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every tensor of `a` equals (dtype, shape, bytes) the same-named tensor of `b`, and both
/// have the same names.
fn same_tensors(a: &std::path::Path, b: &std::path::Path) {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut na = a.names();
    let mut nb = b.names();
    na.sort();
    nb.sort();
    assert_eq!(na, nb);
    for n in na {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{n}");
        assert!(x.data() == y.data(), "{n}: bytes differ");
    }
}

#[test]
fn saved_checkpoints_equal_transformers_files() {
    use qlora_llama::SaveFormat;
    let device = Device::flex();
    // bnb-4bit: read and written back byte for byte (every packed, absmax and quant_state tensor).
    let q = LoraApplier::base_only(Some(QuantConfig::qlora()), &device);
    let nf4 = LlamaForCausalLM::load_hf(golden("tiny-llama-nf4"), &q).unwrap();
    let out = tmp("bnb");
    nf4.save_hf(&out, SaveFormat::Bnb4(QuantConfig::qlora()))
        .unwrap();
    same_tensors(
        &out.join("model.safetensors"),
        &golden("tiny-llama-nf4/model.safetensors"),
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("tiny-llama-nf4/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["quantization_config"], want["quantization_config"]);
    // f32: the same tensors as transformers' save_pretrained.
    let f = LlamaForCausalLM::load_hf(golden("tiny-llama"), &LoraApplier::base_only(None, &device))
        .unwrap();
    let out32 = tmp("f32");
    f.save_hf(&out32, SaveFormat::F32).unwrap();
    same_tensors(
        &out32.join("model.safetensors"),
        &golden("tiny-llama/model.safetensors"),
    );
    // Merged QLoRA model saved as f32 loads back to the same logits.
    let g = Golden::open("tiny_llama_lora_logits.safetensors");
    let ids = g.input_ids(&device);
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), &device).unwrap();
    let mut m =
        LlamaForCausalLM::load_hf(golden("tiny-llama"), &LoraApplier::base_only(None, &device))
            .unwrap();
    m.load_adapter(&adapter, "default").unwrap();
    let e = m
        .save_hf(tmp("refused"), SaveFormat::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds adapters"), "{e}");
    let merged = m.merge_and_unload();
    let outm = tmp("merged");
    merged.save_hf(&outm, SaveFormat::F32).unwrap();
    let back = LlamaForCausalLM::load_hf(&outm, &LoraApplier::base_only(None, &device)).unwrap();
    check(
        "saved merged",
        values(back.forward(ids, None)),
        &g.f32s("logits_merged"),
        1e-5,
    );
    for d in [out, out32, outm] {
        let _ = std::fs::remove_dir_all(d);
    }
}
