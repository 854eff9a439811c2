//! `nf4_*` ops on Flex (and Autodiff over Flex) against the `qlora-nf4` reference.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use qlora_backend::{
    Nf4Weight, nf4_dequantize, nf4_linear, nf4_linear_backward_input, nf4_linear_output_unused,
};
use qlora_nf4::{Blocksize, QuantConfig, QuantType, QuantizedTensor};
use safetensors::SafeTensors;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut u = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| ((-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32)
        .collect()
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// y[m, n] = Σ_k x[m, k] w[n, k] in f64.
fn ref_linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    (0..m * n)
        .map(|i| {
            (0..k)
                .map(|kk| x[i / n * k + kk] as f64 * w[i % n * k + kk] as f64)
                .sum()
        })
        .collect()
}

use qlora_testenv::compare::assert_close_f64 as assert_close;

fn weight(rows: usize, cols: usize, cfg: QuantConfig, seed: u64) -> (QuantizedTensor, Vec<f32>) {
    let w = randn(rows * cols, seed);
    let q = QuantizedTensor::quantize("w", &w, &[rows, cols], cfg).unwrap();
    let deq = q.dequantize_f32();
    (q, deq)
}

const SHAPES: [(usize, usize, usize); 6] = [
    (1, 17, 64),
    (3, 33, 100),
    (17, 65, 37),
    (5, 1, 130),
    (4, 256, 4160),
    (64, 129, 256),
];

#[test]
fn dequantize_is_bit_exact() {
    let device = Device::flex();
    for (i, &(_, n, k)) in SHAPES.iter().enumerate() {
        for cfg in [
            QuantConfig::qlora(),
            QuantConfig {
                quant_type: QuantType::Fp4,
                blocksize: Blocksize::new(128, "w").unwrap(),
                double_quant: false,
                absmax_rounding: Default::default(),
            },
        ] {
            let (q, deq) = weight(n, k, cfg, i as u64);
            let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
            let ours = to_vec(nf4_dequantize(&w));
            assert_eq!(
                ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                deq.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{n}x{k}"
            );
            assert_eq!(w.to_quantized(), q, "round trip through the device");
        }
    }
}

#[test]
fn linear_and_backward_input_match_the_reference() {
    let device = Device::flex();
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (q, deq) = weight(n, k, QuantConfig::qlora(), 100 + i as u64);
        let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
        let x = randn(m * k, 200 + i as u64);
        let y = to_vec(nf4_linear(
            Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device),
            &w,
        ));
        assert_close(
            &y,
            &ref_linear(&x, &deq, m, n, k),
            1e-5,
            &format!("y {m}x{n}x{k}"),
        );

        let dy = randn(m * n, 300 + i as u64);
        let dx = to_vec(nf4_linear_backward_input(
            Tensor::<2>::from_data(TensorData::new(dy.clone(), [m, n]), &device),
            &w,
        ));
        // dx[m, k] = dy · W = dy · (Wᵀ)ᵀ: the reference with W transposed.
        let wt: Vec<f32> = (0..k * n).map(|j| deq[j % n * k + j / n]).collect();
        assert_close(
            &dx,
            &ref_linear(&dy, &wt, m, k, n),
            1e-5,
            &format!("dx {m}x{n}x{k}"),
        );
    }
}

#[test]
fn leading_dims_and_half_inputs() {
    let device = Device::flex();
    let (q, deq) = weight(24, 96, QuantConfig::qlora(), 7);
    let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
    let x = Tensor::<3>::random([2, 5, 96], Distribution::Normal(0.0, 1.0), &device);
    let y = nf4_linear(x.clone(), &w);
    assert_eq!(y.dims(), [2, 5, 24]);
    let flat = nf4_linear(x.clone().reshape([10, 96]), &w);
    assert_eq!(to_vec(y.reshape([10, 24])), to_vec(flat.clone()));

    let xb = x.reshape([10, 96]).cast(burn::tensor::DType::BF16);
    let yb = nf4_linear(xb.clone(), &w);
    assert_eq!(yb.dtype(), burn::tensor::DType::BF16);
    let xf = to_vec(xb.cast(burn::tensor::DType::F32));
    assert_close(
        &to_vec(yb.cast(burn::tensor::DType::F32)),
        &ref_linear(&xf, &deq, 10, 24, 96),
        1e-2,
        "bf16",
    );
}

#[test]
#[should_panic(
    expected = "nf4_linear: input has 95 features in its last dimension, the NF4 weight expects 96"
)]
fn wrong_feature_count_panics_clearly() {
    let device = Device::flex();
    let (q, _) = weight(24, 96, QuantConfig::qlora(), 7);
    let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
    let _ = nf4_linear(Tensor::<2>::zeros([3, 95], &device), &w);
}

#[test]
fn autodiff_gradient_is_dy_times_w() {
    let device = Device::flex().autodiff();
    let (m, n, k) = (6, 40, 72);
    let (q, deq) = weight(n, k, QuantConfig::qlora(), 11);
    let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
    let x =
        Tensor::<2>::from_data(TensorData::new(randn(m * k, 12), [m, k]), &device).require_grad();
    let g = randn(m * n, 13);
    let y = nf4_linear(x.clone(), &w);
    let loss = (y * Tensor::<2>::from_data(TensorData::new(g.clone(), [m, n]), &device)).sum();
    let grads = loss.backward();
    let dx = to_vec(x.grad(&grads).expect("x has a gradient"));
    let wt: Vec<f32> = (0..k * n).map(|j| deq[j % n * k + j / n]).collect();
    assert_close(&dx, &ref_linear(&g, &wt, m, k, n), 1e-5, "dx");
    // W has no gradient: the module holds no float parameter for the optimizer to see.
    assert!(burn::optim::GradientsParams::from_grads(grads, &w).is_empty());

    // Same gradient as Burn's own matmul on the dense weight.
    let x2 = x.clone().detach().require_grad();
    let dense = nf4_dequantize(&w);
    let loss2 = (x2.clone().matmul(dense.transpose())
        * Tensor::<2>::from_data(TensorData::new(g, [m, n]), &device))
    .sum();
    let dx2 = to_vec(x2.grad(&loss2.backward()).unwrap());
    assert_close(
        &dx,
        &dx2.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        1e-5,
        "dx vs dense matmul",
    );
}

#[test]
fn output_unused_linear_is_zeros_with_the_linear_gradient() {
    let device = Device::flex().autodiff();
    let (m, n, k) = (6, 40, 72);
    let (q, _) = weight(n, k, QuantConfig::qlora(), 11);
    let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
    let g = Tensor::<2>::from_data(TensorData::new(randn(m * n, 13), [m, n]), &device);
    let x = Tensor::<2>::from_data(TensorData::new(randn(m * k, 12), [m, k]), &device);
    let grad = |f: fn(Tensor<2>, &Nf4Weight) -> Tensor<2>| {
        let x = x.clone().require_grad();
        let y = f(x.clone(), &w);
        let grads = (y.clone() * g.clone()).sum().backward();
        (to_vec(y), x.grad(&grads).expect("x has a gradient"))
    };
    let (y, dx) = grad(nf4_linear_output_unused);
    let (_, dx_ref) = grad(nf4_linear);
    assert_eq!(y.len(), m * n);
    assert!(y.iter().all(|v| *v == 0.0), "the product was computed");
    assert_eq!(
        to_vec(dx).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        to_vec(dx_ref)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    );
}

#[test]
fn records_round_trip_bit_exact() {
    let device = Device::flex();
    let (q, _) = weight(32, 64, QuantConfig::qlora(), 21);
    let w = Nf4Weight::from_quantized(&q, "w", &device).unwrap();
    let record = w.into_record();
    let bytes = record.into_bytes().unwrap();
    // A module of the same layout, other values, loads the record.
    let (other, _) = weight(32, 64, QuantConfig::qlora(), 22);
    let fresh = Nf4Weight::from_quantized(&other, "w", &device).unwrap();
    let loaded = fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes).unwrap());
    assert_eq!(loaded.to_quantized(), q);
}

#[test]
fn quantize_from_a_float_tensor_and_golden_bnb_weights() {
    let device = Device::flex();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden");
    let nf4 = std::fs::read(root.join("tiny-llama-nf4/model.safetensors")).unwrap();
    let nf4 = SafeTensors::deserialize(&nf4).unwrap();
    let fp = std::fs::read(root.join("tiny-llama/model.safetensors")).unwrap();
    let fp = SafeTensors::deserialize(&fp).unwrap();
    let deq = std::fs::read(root.join("tiny_llama_nf4_dequantized_weights.safetensors")).unwrap();
    let deq = SafeTensors::deserialize(&deq).unwrap();
    let f32s = |t: safetensors::tensor::TensorView| -> Vec<f32> {
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        let from_file = Nf4Weight::from_quantized(
            &QuantizedTensor::from_bnb(&nf4, name).unwrap(),
            name,
            &device,
        )
        .unwrap();
        let want = f32s(deq.tensor(name).unwrap());
        assert_eq!(to_vec(nf4_dequantize(&from_file)), want, "{name}: bnb file");

        let t = fp.tensor(name).unwrap();
        let dense = Tensor::<2>::from_data(
            TensorData::new(f32s(t.clone()), [t.shape()[0], t.shape()[1]]),
            &device,
        );
        let ours = Nf4Weight::quantize(name, dense, QuantConfig::qlora()).unwrap();
        assert_eq!(
            ours.to_quantized().packed,
            from_file.to_quantized().packed,
            "{name}: packed"
        );
    }
    let bad = Tensor::<2>::from_data(
        TensorData::new(vec![1.0, f32::NAN, 0.0, 2.0], [2, 2]),
        &device,
    );
    let e = Nf4Weight::quantize("layers.0.q_proj.weight", bad, QuantConfig::qlora()).unwrap_err();
    assert!(
        e.to_string().contains("layers.0.q_proj.weight") && e.to_string().contains("index 1"),
        "{e}"
    );
}

#[test]
fn backward_works_under_gradient_checkpointing() {
    let device = Device::flex().autodiff().gradient_checkpointing();
    let (m, n, k) = (4, 48, 64);
    let (q, deq) = weight(n, k, QuantConfig::qlora(), 31);
    let w1 = Nf4Weight::from_quantized(&q, "w1", &device).unwrap();
    let (q2, _) = weight(k, n, QuantConfig::qlora(), 32);
    let w2 = Nf4Weight::from_quantized(&q2, "w2", &device).unwrap();
    let x =
        Tensor::<2>::from_data(TensorData::new(randn(m * k, 33), [m, k]), &device).require_grad();
    // Two NF4 linears with a cheap op between them, which checkpointing recomputes.
    let h = nf4_linear(x.clone(), &w1).exp().log();
    let y = nf4_linear(h, &w2);
    let grads = y.sum().backward();
    let dx = to_vec(x.grad(&grads).unwrap());

    // Reference without checkpointing on dense weights.
    let plain = Device::flex().autodiff();
    let xr =
        Tensor::<2>::from_data(TensorData::new(randn(m * k, 33), [m, k]), &plain).require_grad();
    let d1 = Tensor::<2>::from_data(TensorData::new(deq, [n, k]), &plain);
    let d2 = Tensor::<2>::from_data(TensorData::new(q2.dequantize_f32(), [k, n]), &plain);
    let yr = xr
        .clone()
        .matmul(d1.transpose())
        .exp()
        .log()
        .matmul(d2.transpose());
    let dxr = to_vec(xr.grad(&yr.sum().backward()).unwrap());
    assert_close(
        &dx,
        &dxr.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        1e-4,
        "checkpointed dx",
    );
}
