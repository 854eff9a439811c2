//! PEFT adapters as GGUF LoRA adapters for llama.cpp (issue #26), against what llama.cpp's
//! `convert_lora_to_gguf.py` wrote for the same adapters (`tests/fixtures/gguf_lora/`, made by
//! `tests/fixtures/scripts/make_gguf_lora.py` from the six golden families' PEFT adapters): the
//! same tensor names, GGUF shapes and types, the same values to the bit (F32, F16, and Q8_0
//! with its F16 fallback), and the metadata llama.cpp's loader reads with its types
//! (`general.architecture`, `general.type`, `adapter.type`, `adapter.lora.alpha` as float32).
//! Then the cases the converter has no answer for: a scaling other than `alpha / r` folded
//! into `lora_b`, and what llama.cpp's adapters cannot hold refused by name.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use qlora_llama::{GgmlType, GgufFile, GgufValue, LlamaConfig, save_gguf_lora};
use qlora_nn::PeftAdapter;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn family(name: &str) -> PathBuf {
    fixtures().join("golden/families").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-gguf-lora-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn export(name: &str, adapter: &PeftAdapter, ty: GgmlType, out: &str) -> GgufFile {
    let config = LlamaConfig::load(family(name).join("model/config.json")).unwrap();
    let p = tmp(out);
    save_gguf_lora(adapter, &config, ty, &p).unwrap();
    GgufFile::open(&p).unwrap()
}

#[test]
fn adapters_are_written_as_llama_cpps_converter_writes_them() {
    let device = Device::flex();
    let runs = [
        ("llama", "f32", GgmlType::F32),
        ("mistral", "f32", GgmlType::F32),
        ("qwen2", "f32", GgmlType::F32),
        ("qwen3", "f32", GgmlType::F32),
        ("phi3", "f32", GgmlType::F32),
        ("gemma3", "f32", GgmlType::F32),
        ("llama", "f16", GgmlType::F16),
        ("qwen2", "q8_0", GgmlType::Q8_0),
    ];
    let mut compared = 0;
    for (name, outtype, ty) in runs {
        let what = format!("{name} {outtype}");
        let want =
            GgufFile::open(fixtures().join(format!("gguf_lora/{name}-{outtype}.gguf"))).unwrap();
        let adapter = PeftAdapter::load(family(name).join("adapter"), &device).unwrap();
        let got = export(name, &adapter, ty, &format!("{name}-{outtype}.gguf"));
        for key in ["general.architecture", "general.type", "adapter.type"] {
            assert_eq!(got.get(key), want.get(key), "{what}: {key}");
        }
        for key in ["adapter.lora.alpha", "general.quantization_version"] {
            // The same value of the same GGUF type (llama.cpp reads them typed).
            assert_eq!(got.get(key), want.get(key), "{what}: {key}");
        }
        assert!(
            matches!(got.get("adapter.lora.alpha"), Some(GgufValue::F32(_))),
            "{what}"
        );
        assert_eq!(
            got.tensors.keys().collect::<Vec<_>>(),
            want.tensors.keys().collect::<Vec<_>>(),
            "{what}: tensor names"
        );
        for (t, info) in &want.tensors {
            let mine = &got.tensors[t];
            assert_eq!((&mine.dims, mine.ty), (&info.dims, info.ty), "{what}: {t}");
            let (a, b) = (got.read_f32(t).unwrap().1, want.read_f32(t).unwrap().1);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{what}: {t} values");
            compared += 1;
        }
    }
    assert!(compared >= 300, "only {compared} tensors compared");
}

#[test]
fn a_scaling_other_than_alpha_over_r_is_folded_into_lora_b() {
    let device = Device::flex();
    let mut adapter = PeftAdapter::load(family("qwen2").join("adapter"), &device).unwrap();
    adapter.config.use_rslora = true;
    let (alpha, r) = (adapter.config.lora_alpha, adapter.config.r as f64);
    let got = export("qwen2", &adapter, GgmlType::F32, "rslora.gguf");
    // llama.cpp reads alpha 0 as a scale of 1: the whole scaling is in lora_b.
    assert_eq!(got.get("adapter.lora.alpha"), Some(&GgufValue::F32(0.0)));
    let module = "model.layers.1.self_attn.v_proj";
    let b: Vec<f32> = adapter.modules[module]
        .lora_b
        .to_data()
        .try_to_vec::<f32>()
        .unwrap();
    let folded = got.read_f32("blk.1.attn_v.weight.lora_b").unwrap().1;
    let s = alpha / r.sqrt();
    for (x, y) in b.iter().zip(&folded) {
        assert_eq!(*y, (*x as f64 * s) as f32);
    }
}

#[test]
fn what_llama_cpps_adapters_cannot_hold_is_refused_by_name() {
    let device = Device::flex();
    let config = LlamaConfig::load(family("qwen2").join("model/config.json")).unwrap();
    let mut adapter = PeftAdapter::load(family("qwen2").join("adapter"), &device).unwrap();
    adapter.saved.insert(
        "lm_head.weight".into(),
        burn::tensor::TensorData::new(vec![0f32; 4], [2, 2]),
    );
    let e = save_gguf_lora(&adapter, &config, GgmlType::F32, tmp("saved.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be written as a GGUF LoRA adapter") && e.contains("lm_head.weight"),
        "{e}"
    );
    let adapter = PeftAdapter::load(family("qwen2").join("adapter"), &device).unwrap();
    let e = save_gguf_lora(&adapter, &config, GgmlType::Q4_0, tmp("q4.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Q4_0 tensors"), "{e}");
    assert!(!tmp("saved.gguf").exists() && !tmp("q4.gguf").exists());
}
