//! `AdamW8bit` against 32-bit AdamW on a regression problem, its state size, its use of bnb's
//! dynamic maps (read from the golden codebooks), composition with `Paged`, and exact resume
//! from a saved optimizer record.

use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{
    AdamWConfig, GradientsParams, ModuleOptimizer, Optimizer, RecordState, StateSink,
};
use burn::tensor::{Device, Tensor, TensorData};
use qlora_optim::{AdamW8bit, Paged};
use safetensors::SafeTensors;

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[derive(Module, Debug)]
struct Reg {
    lin: Linear,
}

const D_IN: usize = 128;
const D_OUT: usize = 64; // 8,192 weights: 8-bit state; 64 biases: f32 state.

fn init(device: &Device) -> Reg {
    Reg {
        lin: Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(values(D_IN * D_OUT, 1, 0.05), [D_IN, D_OUT]),
                device,
            )),
            bias: Some(Param::from_tensor(Tensor::zeros([D_OUT], device))),
        },
    }
}

/// y = x·W* + b* + noise; returns the mean loss of the last 10 steps.
fn fit(
    mut optim: ModuleOptimizer,
    steps: usize,
    start: usize,
    mut reg: Reg,
    device: &Device,
) -> (Reg, f32, ModuleOptimizer) {
    let w_star = Tensor::<2>::from_data(
        TensorData::new(values(D_IN * D_OUT, 2, 0.3), [D_IN, D_OUT]),
        device,
    );
    let mut tail = Vec::new();
    for step in start..start + steps {
        let x = Tensor::<2>::from_data(
            TensorData::new(values(32 * D_IN, 100 + step as u64, 1.0), [32, D_IN]),
            device,
        );
        let noise = Tensor::<2>::from_data(
            TensorData::new(values(32 * D_OUT, 5000 + step as u64, 0.1), [32, D_OUT]),
            device,
        );
        let y = x.clone().matmul(w_star.clone()) + noise;
        let loss = (reg.lin.forward(x) - y).square().mean();
        tail.push(loss.clone().into_data().try_to_vec::<f32>().unwrap()[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &reg);
        reg = optim.step(3e-3, reg, grads);
    }
    let n = tail.len().min(10);
    let last = tail[tail.len() - n..].iter().sum::<f32>() / n as f32;
    (reg, last, optim)
}

fn adamw8() -> AdamW8bit {
    AdamW8bit {
        weight_decay: 0.0,
        ..AdamW8bit::default()
    }
}

#[test]
fn reaches_the_loss_of_32bit_adamw() {
    let device = Device::flex().autodiff();
    let adamw = AdamWConfig::new()
        .with_weight_decay(0.0)
        .with_epsilon(1e-8)
        .init();
    let (_, l32, _) = fit(adamw, 400, 0, init(&device), &device);
    let (_, l8, _) = fit(
        ModuleOptimizer::from(adamw8()),
        400,
        0,
        init(&device),
        &device,
    );
    eprintln!("final loss: AdamW {l32}, AdamW8bit {l8}");
    assert!(l32 < 0.05, "the problem must be learned: {l32}");
    assert!(
        (l8 - l32).abs() / l32 <= 0.02,
        "AdamW8bit {l8} vs AdamW {l32}"
    );
}

fn bytes<S: RecordState>(s: &S) -> usize {
    let mut sink = StateSink::default();
    s.state_flatten("s", &mut sink);
    sink.tensors.iter().map(|(_, d)| d.as_bytes().len()).sum()
}

#[test]
fn state_is_a_quarter_of_adamw_and_uses_bnb_maps() {
    let device = Device::flex();
    let n = D_IN * D_OUT;
    let p = Tensor::<1>::from_data(TensorData::new(values(n, 3, 1.0), [n]), &device);
    let g = Tensor::<1>::from_data(TensorData::new(values(n, 4, 0.01), [n]), &device);
    let (_, s8) = adamw8().step::<1>(1e-3, p.clone(), g.clone(), None);
    let s8 = s8.unwrap();
    let adamw = AdamWConfig::new().build();
    let (_, s32) = adamw.step::<1>(1e-3, p, g.clone(), None);
    let ratio = bytes(&s8) as f64 / bytes(&s32.unwrap()) as f64;
    assert!(ratio <= 0.27, "8-bit state is {ratio} of AdamW's");

    // After one step from zero: m = (1-β₁)g on the signed map, v = (1-β₂)g² on the unsigned map,
    // each block coded to the nearest entry of bnb's maps (read from the golden file).
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/quant_codebooks.safetensors");
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let map = |k: &str| -> Vec<f32> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (signed, unsigned) = (map("dynamic_map_signed"), map("dynamic_map_unsigned"));
    let g = g.into_data().try_to_vec::<f32>().unwrap();
    let (mc, ma, vc, va) = s8.codes().unwrap();
    let nearest = |map: &[f32], x: f32| -> u8 {
        let mut best = 0;
        for (i, &c) in map.iter().enumerate() {
            if ((x as f64) - c as f64).abs() < ((x as f64) - map[best] as f64).abs() {
                best = i;
            }
        }
        best as u8
    };
    let mut mismatches = 0;
    for (b, block) in g.chunks(256).enumerate() {
        let m: Vec<f32> = block.iter().map(|x| (1.0f32 - 0.9) * x).collect();
        let v: Vec<f32> = block.iter().map(|x| (1.0f32 - 0.999) * x * x).collect();
        let am = m.iter().fold(0f32, |a, x| a.max(x.abs()));
        let av = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert_eq!((ma[b], va[b]), (am, av));
        for i in 0..block.len() {
            mismatches += (mc[b * 256 + i]
                != nearest(&signed, (m[i] * (1.0 / am)).clamp(-1.0, 1.0)))
                as usize;
            mismatches += (vc[b * 256 + i]
                != nearest(&unsigned, (v[i] * (1.0 / av)).clamp(-1.0, 1.0)))
                as usize;
        }
    }
    assert_eq!(mismatches, 0);
}

fn weights(r: &Reg) -> Vec<f32> {
    r.lin.weight.val().into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn composes_with_paged_and_resumes_exactly() {
    let device = Device::flex().autodiff();
    let (plain, _, _) = fit(
        ModuleOptimizer::from(adamw8()),
        20,
        0,
        init(&device),
        &device,
    );
    let paged = Paged::new(adamw8(), Device::flex(), 0);
    let (p, _, _) = fit(ModuleOptimizer::from(paged), 20, 0, init(&device), &device);
    assert!(weights(&p) == weights(&plain));

    // Stop after 10 steps, save the optimizer state, load it into a fresh optimizer, go on.
    for optim in [
        ModuleOptimizer::from(adamw8()),
        ModuleOptimizer::from(Paged::new(AdamWConfig::new().build(), Device::flex(), 0)),
    ] {
        let fresh = optim.clone();
        let (full, _, _) = fit(optim.clone(), 20, 0, init(&device), &device);
        let (half, _, o) = fit(optim, 10, 0, init(&device), &device);
        let bytes = o.into_bytes().unwrap();
        let resumed = fresh.from_bytes(bytes).unwrap();
        let (rest, _, _) = fit(resumed, 10, 10, half, &device);
        assert!(weights(&rest) == weights(&full), "resume differs");
    }
}
