//! PEFT adapter folders: the golden adapter loads, saves in PEFT's format and round-trips
//! bit-identically; bad files are clear errors.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use qlora_nn::{LoraConfig, PeftAdapter};
use safetensors::SafeTensors;

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/tiny-llama-lora")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlora-nn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_golden(to: &Path) {
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(golden().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn golden_adapter_loads_and_round_trips_bit_identically() {
    let device = Device::flex();
    let a = PeftAdapter::load(golden(), &device).unwrap();
    assert_eq!(a.modules.len(), 14);
    let q = &a.modules["model.layers.0.self_attn.q_proj"];
    assert_eq!(q.lora_a.dims(), [8, 64]);
    assert_eq!(q.lora_b.dims(), [64, 8]);
    assert_eq!(
        a.modules["model.layers.1.mlp.down_proj"].lora_a.dims(),
        [8, 172]
    );

    let out = scratch("roundtrip");
    a.save(&out).unwrap();
    let g = std::fs::read(golden().join("adapter_model.safetensors")).unwrap();
    let o = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (g, o) = (
        SafeTensors::deserialize(&g).unwrap(),
        SafeTensors::deserialize(&o).unwrap(),
    );
    let mut gn = g.names();
    let mut on = o.names();
    gn.sort();
    on.sort();
    assert_eq!(gn, on, "same keys as PEFT wrote");
    for n in gn {
        let (gt, ot) = (g.tensor(n).unwrap(), o.tensor(n).unwrap());
        assert_eq!((gt.dtype(), gt.shape()), (ot.dtype(), ot.shape()), "{n}");
        assert_eq!(gt.data(), ot.data(), "{n}: bytes");
    }
    let back = PeftAdapter::load(&out, &device).unwrap();
    assert_eq!(back.config, a.config);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn keys_without_the_peft_prefix_load() {
    let device = Device::flex();
    let a = PeftAdapter::load(golden(), &device).unwrap();
    let dir = scratch("noprefix");
    std::fs::copy(
        golden().join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(golden().join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("base_model.model.").to_string(), v))
        .collect();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let b = PeftAdapter::load(&dir, &device).unwrap();
    assert_eq!(
        b.modules.keys().collect::<Vec<_>>(),
        a.modules.keys().collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_adapter_files_are_named_errors() {
    let device = Device::flex();
    // Truncated tensor file.
    let dir = scratch("truncated");
    copy_golden(&dir);
    let f = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = PeftAdapter::load(&dir, &device).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");

    // A missing lora_B.
    copy_golden(&dir);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("layers.1.self_attn.v_proj.lora_B.weight"))
        .collect();
    std::fs::write(&f, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = PeftAdapter::load(&dir, &device).unwrap_err().to_string();
    assert!(
        e.contains("layers.1.self_attn.v_proj") && e.contains("only one of"),
        "{e}"
    );

    // `r` disagreeing with the tensors.
    copy_golden(&dir);
    let cfg = std::fs::read_to_string(golden().join("adapter_config.json"))
        .unwrap()
        .replace("\"r\": 8", "\"r\": 4");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    let e = PeftAdapter::load(&dir, &device).unwrap_err().to_string();
    assert!(
        e.contains("rank 8 in the tensor") && e.contains("rank 4"),
        "{e}"
    );

    // A tensor that is not a LoRA weight.
    copy_golden(&dir);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let extra = views[0].1.clone();
    views.push(("base_model.model.model.embed_tokens.weight".into(), extra));
    std::fs::write(&f, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = PeftAdapter::load(&dir, &device).unwrap_err().to_string();
    assert!(
        e.contains("embed_tokens") && e.contains("nor a parameter of a module in modules_to_save"),
        "{e}"
    );

    // No config.
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let e = PeftAdapter::load(&dir, &device).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn adapters_from_layers_save_with_their_module_paths() {
    let device = Device::flex();
    let cfg = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        ..LoraConfig::default()
    };
    let a = qlora_nn::LoraAdapter::new(
        [6, 5],
        2,
        2.0,
        0.0,
        qlora_nn::InitLoraWeights::Random,
        &device,
    );
    let adapter = PeftAdapter::from_adapters(cfg.clone(), [("blocks.0.proj", &a)]);
    let dir = scratch("fromlayers");
    adapter.save(&dir).unwrap();
    let back = PeftAdapter::load(&dir, &device).unwrap();
    let w = back.modules["blocks.0.proj"].clone();
    assert_eq!(w.lora_a.clone().into_data(), a.lora_a.val().into_data());
    let layer = w.into_adapter(&back.config, "blocks.0.proj").unwrap();
    assert_eq!(layer.scaling, 2.0);
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// PEFT adapters saved in fp16 and bf16 (`tests/fixtures/scripts/make_half_adapters.py`, by
/// PyTorch's casts) load as the f32 adapter rounded to that dtype, remember the dtype, and save
/// back in it byte for byte; told otherwise, they save in f32.
#[test]
fn half_precision_adapters_load_and_save_in_their_dtype() {
    use qlora_nn::AdapterDtype;
    let device = Device::flex();
    let f32_adapter = PeftAdapter::load(golden(), &device).unwrap();
    assert_eq!(f32_adapter.dtype, AdapterDtype::F32);
    for (name, dtype, round) in [
        (
            "f16",
            AdapterDtype::F16,
            (|v: f32| qlora_nf4::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        ("bf16", AdapterDtype::BF16, |v: f32| {
            qlora_nf4::bf16::from_f32(v).to_f32()
        }),
    ] {
        let dir = golden().with_file_name(format!("tiny-llama-lora-{name}"));
        let a = PeftAdapter::load(&dir, &device).unwrap();
        assert_eq!(a.dtype, dtype, "{name}");
        assert_eq!(a.modules.len(), f32_adapter.modules.len());
        for (module, w) in &a.modules {
            let want = &f32_adapter.modules[module];
            for (ours, full) in [(&w.lora_a, &want.lora_a), (&w.lora_b, &want.lora_b)] {
                let ours = ours.clone().into_data().try_to_vec::<f32>().unwrap();
                let full = full.clone().into_data().try_to_vec::<f32>().unwrap();
                assert!(
                    ours.iter()
                        .zip(&full)
                        .all(|(o, f)| o.to_bits() == round(*f).to_bits()),
                    "{name} {module}: not the f32 values rounded"
                );
            }
        }
        let out = scratch(&format!("half-{name}"));
        a.save(&out).unwrap();
        let tensors = |p: &Path| {
            let bytes = std::fs::read(p.join("adapter_model.safetensors")).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut v: Vec<(String, String, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(k, t)| (k, format!("{:?}", t.dtype()), t.data().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            tensors(&out),
            tensors(&dir),
            "{name}: saved back differently"
        );
        a.clone().with_dtype(AdapterDtype::F32).save(&out).unwrap();
        assert!(tensors(&out).iter().all(|(_, d, _)| d == "F32"));
        let _ = std::fs::remove_dir_all(&out);
    }
}
