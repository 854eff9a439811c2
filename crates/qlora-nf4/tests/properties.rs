//! Property tests over random shapes, blocksizes and scales.

use proptest::prelude::*;
use qlora_nf4::{
    Absmax, Blocksize, QuantConfig, QuantType, QuantizedTensor, bf16, f16, pack_nibbles,
    unpack_nibbles,
};

/// Largest half-gap between neighbouring values of a sorted table.
fn max_half_gap(table: &[f32; 16]) -> f32 {
    let mut v = table.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.windows(2)
        .map(|w| (w[1] - w[0]) / 2.0)
        .fold(0.0, f32::max)
}

fn config() -> impl Strategy<Value = QuantConfig> {
    (
        prop_oneof![Just(QuantType::Nf4), Just(QuantType::Fp4)],
        5u32..=12,
        any::<bool>(),
    )
        .prop_map(|(q, p, dq)| QuantConfig {
            quant_type: q,
            blocksize: Blocksize::new(1 << p, "w").unwrap(),
            double_quant: dq,
            absmax_rounding: Default::default(),
        })
}

fn tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    tensor_with_exponents(-20..20)
}

fn tensor_with_exponents(
    exps: std::ops::Range<i32>,
) -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (1usize..40, 1usize..300, exps).prop_flat_map(|(rows, cols, exp)| {
        let scale = 2f32.powi(exp);
        (
            Just(vec![rows, cols]),
            prop::collection::vec(-1.0f32..1.0, rows * cols)
                .prop_map(move |v| v.into_iter().map(|x| x * scale).collect()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// |dequant(quant(x)) - x| <= half-gap × absmax of its block (+ the DQ error of the absmax
    /// itself and f32 rounding).
    #[test]
    fn round_trip_error_is_bounded((shape, x) in tensor(), cfg in config()) {
        let q = QuantizedTensor::quantize("w", &x, &shape, cfg).unwrap();
        let back: Vec<f32> = q.dequantize();
        let bs = cfg.blocksize.get();
        let gap = max_half_gap(cfg.quant_type.code_table());
        let true_absmax: Vec<f32> = x.chunks(bs).map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
        let used = q.absmax.to_f32();
        for (i, (a, b)) in x.iter().zip(&back).enumerate() {
            let blk = i / bs;
            let am = true_absmax[blk];
            let dq_err = (used[blk] - am).abs();
            let bound = gap * am + dq_err + 4.0 * f32::EPSILON * am.max(used[blk].abs());
            prop_assert!((a - b).abs() <= bound, "element {i}: {a} -> {b}, bound {bound}");
        }
        if let Absmax::F32(a) = &q.absmax {
            prop_assert_eq!(a, &true_absmax);
        }
    }

    /// A row range dequantizes to the same values as the whole tensor.
    #[test]
    fn row_ranges_match_the_whole((shape, x) in tensor(), cfg in config(), a in 0usize..40, b in 0usize..40) {
        let q = QuantizedTensor::quantize("w", &x, &shape, cfg).unwrap();
        let rows = shape[0];
        let (s, e) = (a.min(b) % (rows + 1), a.max(b).min(rows));
        let (s, e) = (s.min(e), e);
        let whole: Vec<f32> = q.dequantize();
        let part: Vec<f32> = q.dequantize_rows(s..e).unwrap();
        let cols = shape[1];
        prop_assert_eq!(&part[..], &whole[s * cols..e * cols]);
    }

    /// Nibble packing round-trips, with the pad nibble for odd counts.
    #[test]
    fn packing_round_trips(codes in prop::collection::vec(0u8..16, 0..500)) {
        let packed = pack_nibbles(&codes, 7);
        prop_assert_eq!(packed.len(), codes.len().div_ceil(2));
        prop_assert_eq!(unpack_nibbles(&packed, codes.len()), codes.clone());
        if codes.len() % 2 == 1 {
            prop_assert_eq!(packed.last().unwrap() & 0x0f, 7);
        }
    }

    /// A NaN or ±Inf anywhere is refused, naming the first such index.
    #[test]
    fn non_finite_anywhere_is_an_error((shape, mut x) in tensor(), cfg in config(), pos in any::<prop::sample::Index>(), kind in 0..3) {
        let i = pos.index(x.len());
        x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kind as usize];
        let err = QuantizedTensor::quantize("layers.3.w", &x, &shape, cfg).unwrap_err();
        prop_assert!(matches!(err, qlora_nf4::Nf4Error::NonFinite { index, .. } if index == i), "{err}");
        prop_assert!(err.to_string().contains("layers.3.w"));
    }

    /// bf16 and f16 inputs quantize like their exact f32 widening; output rounds to nearest.
    #[test]
    fn half_inputs_quantize_like_f32((shape, x) in tensor_with_exponents(-10..10), cfg in config()) {
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        for (half, widened) in [
            (QuantizedTensor::quantize("w", &xb, &shape, cfg).unwrap(), xb.iter().map(|v| v.to_f32()).collect::<Vec<_>>()),
            (QuantizedTensor::quantize("w", &xh, &shape, cfg).unwrap(), xh.iter().map(|v| v.to_f32()).collect()),
        ] {
            let f = QuantizedTensor::quantize("w", &widened, &shape, cfg).unwrap();
            prop_assert_eq!(&half.packed, &f.packed);
            prop_assert_eq!(&half.absmax, &f.absmax);
        }
        let q = QuantizedTensor::quantize("w", &xb, &shape, cfg).unwrap();
        let f32_out: Vec<f32> = q.dequantize();
        let b_out: Vec<bf16> = q.dequantize();
        for (a, b) in f32_out.iter().zip(&b_out) {
            prop_assert_eq!(bf16::from_f32(*a).to_bits(), b.to_bits());
        }
    }
}

#[test]
fn empty_and_mismatched_shapes_are_errors() {
    let e = QuantizedTensor::quantize::<f32>("w", &[], &[0, 4], QuantConfig::qlora()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e =
        QuantizedTensor::quantize("w", &[1.0f32; 6], &[2, 4], QuantConfig::qlora()).unwrap_err();
    assert!(
        e.to_string().contains("6 values do not fill shape [2, 4]"),
        "{e}"
    );
    let q = QuantizedTensor::quantize("w", &[1.0f32; 8], &[2, 4], QuantConfig::qlora()).unwrap();
    assert!(q.dequantize_rows::<f32>(1..3).is_err());
}

#[test]
fn double_quant_costs_4_127_bits_per_parameter() {
    let x: Vec<f32> = (0..4096 * 64)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let q = QuantizedTensor::quantize("w", &x, &[4096, 64], QuantConfig::qlora()).unwrap();
    let bits = q.storage_bytes() as f64 * 8.0 / x.len() as f64;
    assert!((bits - 4.127).abs() < 0.001, "{bits}");
    let plain = QuantizedTensor::quantize(
        "w",
        &x,
        &[4096, 64],
        QuantConfig {
            double_quant: false,
            ..QuantConfig::qlora()
        },
    )
    .unwrap();
    assert!((plain.storage_bytes() as f64 * 8.0 / x.len() as f64 - 4.5).abs() < 1e-9);
}
