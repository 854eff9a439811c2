//! Every case of bitsandbytes' `quant_4bit.safetensors`, NF4 and FP4, with and without double
//! quantization, against our quantizer.

use qlora_nf4::{
    Absmax, AbsmaxRounding, Blocksize, QuantConfig, QuantType, QuantizedTensor, bf16,
    dynamic_map_signed, dynamic_map_unsigned,
};
use safetensors::{Dtype, SafeTensors};

mod common;
use common::{f32s, fixture};

fn u8s(st: &SafeTensors, key: &str) -> Vec<u8> {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
    assert_eq!(t.dtype(), Dtype::U8, "{key}");
    t.data().to_vec()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bitwise equality with the first differing index in the message (not the whole vector).
fn assert_bits_eq(ours: &[f32], golden: &[f32], what: &str) {
    assert_eq!(ours.len(), golden.len(), "{what}: length");
    if let Some(i) = ours
        .iter()
        .zip(golden)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!(
            "{what}: first difference at {i}: ours {:e} ({:#x}), golden {:e} ({:#x})",
            ours[i],
            ours[i].to_bits(),
            golden[i],
            golden[i].to_bits()
        );
    }
}

const CASES: [&str; 7] = [
    "v64",
    "v4096",
    "m256x512",
    "v100",
    "m7x9",
    "edge",
    "edge_bf16src",
];

fn quantize_case(st: &SafeTensors, case: &str, qt: QuantType, dq: bool) -> QuantizedTensor {
    quantize_case_with(st, case, qt, dq, AbsmaxRounding::Nearest)
}

fn quantize_case_with(
    st: &SafeTensors,
    case: &str,
    qt: QuantType,
    dq: bool,
    absmax_rounding: AbsmaxRounding,
) -> QuantizedTensor {
    let input = st.tensor(&format!("{case}/input")).unwrap();
    let shape = input.shape().to_vec();
    let config = QuantConfig {
        quant_type: qt,
        blocksize: Blocksize::DEFAULT,
        double_quant: dq,
        absmax_rounding,
    };
    match input.dtype() {
        Dtype::BF16 => {
            let v: Vec<bf16> = input
                .data()
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes(b.try_into().unwrap()))
                .collect();
            QuantizedTensor::quantize(case, &v, &shape, config).unwrap()
        }
        _ => QuantizedTensor::quantize(case, &f32s(st, &format!("{case}/input")), &shape, config)
            .unwrap(),
    }
}

/// Dequantized output in the input's dtype, widened to f32 for comparison.
fn dequant_as_input(q: &QuantizedTensor) -> Vec<f32> {
    match q.dtype {
        qlora_nf4::FloatDtype::BF16 => q
            .dequantize::<bf16>()
            .into_iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => q.dequantize::<f32>(),
    }
}

#[test]
fn plain_4bit_is_bit_exact() {
    let bytes = fixture("quant_4bit.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for case in CASES {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let p = format!("{case}/{}", qt.as_str());
            let q = quantize_case(&st, case, qt, false);
            assert_eq!(q.packed, u8s(&st, &format!("{p}/packed")), "{p} packed");
            assert_eq!(q.codes(), u8s(&st, &format!("{p}/codes")), "{p} codes");
            let Absmax::F32(am) = &q.absmax else {
                panic!("plain absmax")
            };
            assert_bits_eq(
                am,
                &f32s(&st, &format!("{p}/absmax")),
                &format!("{p} absmax"),
            );
            assert_bits_eq(
                &dequant_as_input(&q),
                &f32s(&st, &format!("{p}/dequant")),
                &format!("{p} dequant"),
            );
        }
    }
}

/// The edge blocks one by one, so that each claim of the README's "What is bit-exact" is a
/// named check: all-zero blocks take the code of 0.0 as bnb-CPU does (NF4 code 7, FP4 code 0),
/// values exactly on a midpoint take the lower code, a subnormal or FLT_MAX absmax, a negative
/// absmax, signed zeros.
#[test]
fn each_edge_block_is_bit_exact_with_bnb_cpu() {
    let bytes = fixture("quant_4bit.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> =
        serde_json::from_str(&st_metadata(&bytes)["edge_block_names"]).unwrap();
    assert_eq!(names.len(), 13);
    for qt in [QuantType::Nf4, QuantType::Fp4] {
        let q = quantize_case(&st, "edge", qt, false);
        let want_codes = u8s(&st, &format!("edge/{}/codes", qt.as_str()));
        let want_absmax = f32s(&st, &format!("edge/{}/absmax", qt.as_str()));
        let want_dequant = f32s(&st, &format!("edge/{}/dequant", qt.as_str()));
        let codes = q.codes();
        let Absmax::F32(absmax) = &q.absmax else {
            panic!("plain absmax")
        };
        let dequant = q.dequantize::<f32>();
        for (b, name) in names.iter().enumerate() {
            let r = b * 64..(b + 1) * 64;
            let what = format!("{} block `{name}`", qt.as_str());
            assert_eq!(codes[r.clone()], want_codes[r.clone()], "{what}: codes");
            assert_eq!(
                absmax[b].to_bits(),
                want_absmax[b].to_bits(),
                "{what}: absmax"
            );
            assert_bits_eq(&dequant[r.clone()], &want_dequant[r.clone()], &what);
            if name == "zeros" {
                // bnb-CPU's code of 0.0; bnb-CUDA writes code 0 here (README), same value.
                let zero = match qt {
                    QuantType::Nf4 => 7,
                    QuantType::Fp4 => 0,
                };
                assert!(codes[r.clone()].iter().all(|&c| c == zero), "{what}");
                assert!(dequant[r].iter().all(|&v| v == 0.0), "{what}");
            }
        }
    }
}

/// The `__metadata__` of a safetensors file.
fn st_metadata(bytes: &[u8]) -> std::collections::HashMap<String, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn bf16_input_gives_bf16_output() {
    let bytes = fixture("quant_4bit.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("edge_bf16src/nf4/dequant").unwrap().dtype(),
        Dtype::BF16
    );
    let q = quantize_case(&st, "edge_bf16src", QuantType::Nf4, true);
    assert_eq!(q.dtype, qlora_nf4::FloatDtype::BF16);
    let ours: Vec<u16> = q.dequantize::<bf16>().iter().map(|v| v.to_bits()).collect();
    let t = st.tensor("edge_bf16src/nf4_dq/dequant").unwrap();
    let want: Vec<u16> = t
        .data()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    // The DQ dequant depends on bnb-CPU's absmax codes; compare where ours agree with them.
    let golden_q = u8s(&st, "edge_bf16src/nf4_dq/qabsmax");
    let Absmax::Double(d) = &q.absmax else {
        panic!()
    };
    for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
        if d.codes[i / 64] == golden_q[i / 64] {
            assert_eq!(a, b, "element {i}");
        }
    }
}

/// With bnb-CPU's table ([`AbsmaxRounding::CpuTable`]) every double-quantized tensor of the
/// golden set is bnb's, bit for bit: the 8-bit codes (the LUT's, one step off exact nearest for
/// some), the nested scales, the reconstructed absmax and the dequantized values; only where
/// the mean differs by an ulp (the golden README's caveat) are codes of another offset skipped.
#[test]
fn double_quant_with_the_cpu_table_is_bnb_cpu_bit_for_bit() {
    let bytes = fixture("quant_4bit.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (mut compared, mut off_nearest) = (0, 0);
    for case in CASES {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let p = format!("{case}/{}_dq", qt.as_str());
            let q = quantize_case_with(&st, case, qt, true, AbsmaxRounding::CpuTable);
            let Absmax::Double(d) = &q.absmax else {
                panic!("double absmax")
            };
            if d.offset.to_bits() != f32s(&st, &format!("{p}/offset"))[0].to_bits() {
                continue;
            }
            let want = u8s(&st, &format!("{p}/qabsmax"));
            assert_eq!(d.codes, want, "{p}: codes");
            off_nearest += d
                .codes
                .iter()
                .zip(u8s(&st, &format!("{p}/qabsmax_exact_nearest")))
                .filter(|(a, b)| **a != *b)
                .count();
            assert_bits_eq(
                &d.reconstruct(),
                &f32s(&st, &format!("{p}/absmax_reconstructed")),
                &format!("{p} absmax'"),
            );
            let deq = dequant_as_input(&q);
            let want = f32s(&st, &format!("{p}/dequant"));
            assert!(
                deq.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{p}: dequantized values"
            );
            compared += 1;
        }
    }
    eprintln!("{compared} tensors; {off_nearest} codes where the table is not exact nearest");
    assert!(compared >= 10, "only {compared} tensors compared");
    assert!(
        off_nearest > 0,
        "no case tells the table from exact nearest"
    );
}

#[test]
fn double_quant_matches_exact_nearest() {
    let bytes = fixture("quant_4bit.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let map = dynamic_map_signed();
    let mut offsets_exact = 0;
    let summary: serde_json::Value =
        serde_json::from_slice(&fixture("quant_4bit_summary.json")).unwrap();
    let mut cases = 0;
    for case in CASES {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let p = format!("{case}/{}_dq", qt.as_str());
            let q = quantize_case(&st, case, qt, true);
            assert_eq!(q.packed, u8s(&st, &format!("{p}/packed")), "{p} packed");
            let Absmax::Double(d) = &q.absmax else {
                panic!("double absmax")
            };
            let golden_offset = f32s(&st, &format!("{p}/offset"))[0];
            let ulps = (d.offset.to_bits() as i64 - golden_offset.to_bits() as i64).abs();
            assert!(
                ulps <= 1,
                "{p}: offset {} vs {golden_offset} ({ulps} ulp)",
                d.offset
            );
            offsets_exact += (ulps == 0) as usize;
            cases += 1;
            if ulps != 0 {
                continue; // codes of a different offset are not comparable bit for bit
            }
            assert_eq!(
                d.codes,
                u8s(&st, &format!("{p}/qabsmax_exact_nearest")),
                "{p} exact-nearest codes"
            );
            assert_bits_eq(
                &d.nested_absmax,
                &f32s(&st, &format!("{p}/nested_absmax")),
                &format!("{p} nested"),
            );
            // Where bnb-CPU's LUT picked the same code, reconstruction and dequant are bit-exact.
            let lut_codes = u8s(&st, &format!("{p}/qabsmax"));
            // bnb's summary counts the blocks where its CPU LUT differs from exact nearest.
            let differing = d
                .codes
                .iter()
                .zip(&lut_codes)
                .filter(|(a, b)| a != b)
                .count();
            let key = format!("{case}/{}", qt.as_str());
            assert_eq!(
                differing as u64,
                summary[&key]["qabsmax_mismatch_vs_exact_nearest"]
                    .as_u64()
                    .unwrap(),
                "{key}: blocks where bnb-CPU's LUT differs from our exact nearest"
            );
            let rec_golden = f32s(&st, &format!("{p}/absmax_reconstructed"));
            let rec = d.reconstruct();
            let deq = dequant_as_input(&q);
            let deq_golden = f32s(&st, &format!("{p}/dequant"));
            for (b, (&ours, &lut)) in d.codes.iter().zip(&lut_codes).enumerate() {
                let na = d.nested_absmax[b / 256];
                if ours == lut {
                    assert_eq!(
                        rec[b].to_bits(),
                        rec_golden[b].to_bits(),
                        "{p} absmax' of block {b}"
                    );
                    for i in b * 64..((b + 1) * 64).min(deq.len()) {
                        assert_eq!(deq[i].to_bits(), deq_golden[i].to_bits(), "{p} dequant {i}");
                    }
                } else if na > 0.0 {
                    // bnb-CPU's LUT is one map step away from exact nearest.
                    assert_eq!(
                        (ours as i32 - lut as i32).abs(),
                        1,
                        "{p} block {b}: {ours} vs LUT {lut}"
                    );
                    let step = (map[ours as usize] - map[lut as usize]).abs() * na;
                    let rounding = 4.0 * f32::EPSILON * rec[b].abs().max(d.offset.abs());
                    assert!(
                        (rec[b] - rec_golden[b]).abs() <= step + rounding,
                        "{p} block {b}"
                    );
                } else {
                    // All-zero nested block: bnb-CPU stores code 0, exact nearest 127; same value.
                    assert_eq!(rec[b], rec_golden[b], "{p} degenerate block {b}");
                }
            }
        }
    }
    // ATen's cascade sum reproduces torch's mean on every golden case.
    assert_eq!(offsets_exact, cases, "offsets equal to the bit");
}

#[test]
fn codebooks_equal_bnb() {
    let bytes = fixture("quant_codebooks.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(bits(&f32s(&st, "nf4_code")), bits(&qlora_nf4::NF4_CODE));
    assert_eq!(bits(&f32s(&st, "fp4_code")), bits(&qlora_nf4::FP4_CODE));
    assert_eq!(
        bits(&f32s(&st, "dynamic_map_signed")),
        bits(dynamic_map_signed())
    );
    assert_eq!(
        bits(&f32s(&st, "dynamic_map_unsigned")),
        bits(dynamic_map_unsigned())
    );
}

#[test]
fn nan_and_inf_are_refused_with_their_index() {
    let bytes = fixture("quant_nan_inf_observed.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let x = f32s(&st, "input");
    let err =
        QuantizedTensor::quantize("layer.weight", &x, &[3, 64], QuantConfig::qlora()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("layer.weight") && msg.contains("index 3") && msg.contains("NaN"),
        "{msg}"
    );
    let err = QuantizedTensor::quantize("w", &x[64..], &[2, 64], QuantConfig::qlora()).unwrap_err();
    assert!(
        err.to_string().contains("index 9") && err.to_string().contains("inf"),
        "{err}"
    );
}
