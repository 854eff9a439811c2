//! The bnb-4bit checkpoint `tiny-llama-nf4` (transformers `save_pretrained` of a 4-bit model):
//! every quantized linear loads, dequantizes like bnb and writes back byte-identical; quantizing
//! the fp32 `tiny-llama` weights reproduces the file.

use std::collections::BTreeMap;

use qlora_nf4::{Absmax, QuantConfig, QuantizedTensor, TensorLookup, is_bnb_4bit};
use safetensors::SafeTensors;

mod common;
use common::{f32s, fixture};

/// The quantized weights of the checkpoint: names whose quant_state tensor is present.
fn quantized_weights(st: &SafeTensors) -> Vec<String> {
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_suffix(".quant_state.bitsandbytes__nf4")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_4bit_linear_loads_dequantizes_and_writes_back() {
    let bytes = fixture("tiny-llama-nf4/model.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let deq_bytes = fixture("tiny_llama_nf4_dequantized_weights.safetensors");
    let deq = SafeTensors::deserialize(&deq_bytes).unwrap();
    let weights = quantized_weights(&st);
    assert_eq!(weights.len(), 14, "2 layers x 7 linears");
    for w in &weights {
        assert!(is_bnb_4bit(&st, w));
        let q = QuantizedTensor::from_bnb(&st, w).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(q.absmax, Absmax::Double(_)),
            "{w}: double-quantized"
        );
        let ours = q.dequantize_f32();
        let golden = f32s(&deq, w);
        assert_eq!(ours.len(), golden.len());
        for (i, (a, b)) in ours.iter().zip(&golden).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{w} element {i}: {a} vs {b}");
        }
        // Writing back gives the file's tensors: dtype, shape and bytes, JSON included.
        let written = q.to_bnb(w);
        assert_eq!(
            written.len(),
            6,
            "{w}: weight, absmax, nested_absmax, nested_quant_map, quant_map, quant_state"
        );
        for (name, t) in &written {
            let orig = st
                .tensor(name)
                .unwrap_or_else(|_| panic!("{name} is not in the file"));
            assert_eq!(t.dtype, orig.dtype(), "{name} dtype");
            assert_eq!(t.shape, orig.shape(), "{name} shape");
            assert_eq!(&t.data[..], orig.data(), "{name} bytes");
        }
    }
}

#[test]
fn quantizing_the_fp32_model_reproduces_the_file() {
    let fp_bytes = fixture("tiny-llama/model.safetensors");
    let fp = SafeTensors::deserialize(&fp_bytes).unwrap();
    let bytes = fixture("tiny-llama-nf4/model.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut lut_differences = 0;
    let mut blocks = 0;
    for w in quantized_weights(&st) {
        let t = fp.tensor(&w).unwrap();
        let values = f32s(&fp, &w);
        let ours = QuantizedTensor::quantize(&w, &values, t.shape(), QuantConfig::qlora()).unwrap();
        let file = QuantizedTensor::from_bnb(&st, &w).unwrap();
        assert_eq!(ours.packed, file.packed, "{w}: packed nibbles");
        assert_eq!(ours.quant_state().shape, file.quant_state().shape);
        let (Absmax::Double(a), Absmax::Double(b)) = (&ours.absmax, &file.absmax) else {
            panic!()
        };
        assert_eq!(a.offset.to_bits(), b.offset.to_bits(), "{w}: offset");
        assert_eq!(a.nested_absmax, b.nested_absmax, "{w}: nested absmax");
        // bnb-CPU made this file with its 8-bit LUT; exact nearest differs by one step where
        // a value sits within the LUT's resolution of a midpoint.
        for (x, y) in a.codes.iter().zip(&b.codes) {
            if x != y {
                assert_eq!((*x as i32 - *y as i32).abs(), 1, "{w}: codes {x} vs {y}");
                lut_differences += 1;
            }
        }
        blocks += a.codes.len();
    }
    // 14 linears, 1,416 blocks: bnb-CPU's LUT puts 3 of them one map step off exact nearest.
    assert_eq!(blocks, 1416);
    assert_eq!(
        lut_differences, 3,
        "blocks where bnb-CPU's LUT differs from exact nearest"
    );
}

#[test]
fn missing_or_inconsistent_companions_are_named() {
    let bytes = fixture("tiny-llama-nf4/model.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let w = "model.layers.0.self_attn.q_proj.weight";
    let mut map: BTreeMap<String, qlora_nf4::RawTensor<'static>> = BTreeMap::new();
    for name in st.names() {
        if name.starts_with(w) {
            let t = TensorLookup::tensor(&st, name).unwrap();
            map.insert(
                name.to_string(),
                qlora_nf4::RawTensor {
                    dtype: t.dtype,
                    shape: t.shape,
                    data: t.data.into_owned().into(),
                },
            );
        }
    }
    assert!(QuantizedTensor::from_bnb(&map, w).is_ok());

    let mut m = map.clone();
    m.remove(&format!("{w}.nested_absmax"));
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(e.contains("nested_absmax") && e.contains(w), "{e}");

    let mut m = map.clone();
    let absmax = m.get_mut(&format!("{w}.absmax")).unwrap();
    absmax.data.to_mut().pop();
    absmax.shape = vec![63];
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(
        e.contains("absmax") && e.contains("expected 64, found 63"),
        "{e}"
    );

    let mut m = map.clone();
    let qs_key = format!("{w}.quant_state.bitsandbytes__nf4");
    let json = String::from_utf8(m[&qs_key].data.to_vec())
        .unwrap()
        .replace("\"blocksize\": 64", "\"blocksize\": 63");
    m.insert(
        qs_key.clone(),
        qlora_nf4::RawTensor::u8(vec![json.len()], json.into_bytes()),
    );
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(e.contains("blocksize 63"), "{e}");

    let mut m = map.clone();
    let json = String::from_utf8(m[&qs_key].data.to_vec())
        .unwrap()
        .replace("\"nf4\"", "\"int4\"");
    m.insert(
        qs_key.clone(),
        qlora_nf4::RawTensor::u8(vec![json.len()], json.into_bytes()),
    );
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(e.contains("unknown quant type `int4`"), "{e}");

    let mut m = map.clone();
    let json = String::from_utf8(m[&qs_key].data.to_vec())
        .unwrap()
        .replace("[64, 64]", "[64, 65]");
    m.insert(
        qs_key.clone(),
        qlora_nf4::RawTensor::u8(vec![json.len()], json.into_bytes()),
    );
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(e.contains("packed bytes") && e.contains(w), "{e}");

    let mut m = map.clone();
    let json = String::from_utf8(m[&qs_key].data.to_vec())
        .unwrap()
        .replace("[64, 64]", "[18446744073709551615, 4]");
    m.insert(
        qs_key.clone(),
        qlora_nf4::RawTensor::u8(vec![json.len()], json.into_bytes()),
    );
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(e.contains("more elements than"), "{e}");

    let mut m = map.clone();
    m.remove(&qs_key);
    let e = QuantizedTensor::from_bnb(&m, w).unwrap_err().to_string();
    assert!(
        e.contains("missing companion tensor") && e.contains("quant_state"),
        "{e}"
    );
}
