//! `Paged<AdamW>` on Flex: the same parameters as plain AdamW, bit for bit, over 20 steps, and
//! the budget bounds the resident state.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use qlora_optim::{PAGEABLE_MIN_ELEMENTS, Paged};

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
    c: Linear,
}

/// Deterministic values in [-scale, scale) (the device RNG is shared by parallel tests).
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

fn linear(d_in: usize, d_out: usize, seed: u64, device: &Device) -> Linear {
    let w = values(d_in * d_out, seed, 1.0 / (d_in as f32).sqrt());
    let b = values(d_out, seed + 100, 0.1);
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [d_out]),
            device,
        ))),
    }
}

impl Net {
    fn new(device: &Device) -> Self {
        // Three weights of 120,000 elements (paged) and their biases (never paged).
        Self {
            a: linear(300, 400, 1, device),
            b: linear(400, 300, 2, device),
            c: linear(300, 400, 3, device),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.c
            .forward(self.b.forward(self.a.forward(x).tanh()).tanh())
    }
}

fn params(net: &Net) -> Vec<Vec<f32>> {
    [&net.a, &net.b, &net.c]
        .iter()
        .flat_map(|l| {
            [
                l.weight.val().into_data().try_to_vec::<f32>().unwrap(),
                l.bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            ]
        })
        .collect()
}

fn train(device: &Device, mut optim: ModuleOptimizer, steps: usize) -> Net {
    let ad = device.clone().autodiff();
    let mut net = Net::new(&ad);
    for step in 0..steps {
        let x = Tensor::<2>::from_data(
            TensorData::new(values(8 * 300, 1000 + step as u64, 1.0), [8, 300]),
            &ad,
        );
        let loss = net.forward(x).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-3, net, grads);
    }
    net
}

fn adamw() -> burn::optim::AdamW {
    AdamWConfig::new().with_weight_decay(0.01).build()
}

#[test]
fn training_is_deterministic() {
    let device = Device::flex();
    let a = train(&device, ModuleOptimizer::from(adamw()), 3);
    let b = train(&device, ModuleOptimizer::from(adamw()), 3);
    assert!(params(&a) == params(&b), "plain runs differ");
}

#[test]
fn paged_adamw_equals_adamw_bit_for_bit() {
    let device = Device::flex();
    let plain = train(&device, ModuleOptimizer::from(adamw()), 20);
    for budget in [0, 2 * 120_000 * 8, usize::MAX] {
        let paged = Paged::new(adamw(), Device::flex(), budget);
        let net = train(&device, ModuleOptimizer::from(paged), 20);
        assert!(params(&net) == params(&plain), "budget {budget}");
    }
}

#[test]
fn resident_state_stays_within_the_budget() {
    let device = Device::flex();
    let one_state = 120_000 * 4 * 2; // AdamW: two f32 moments.
    const { assert!(120_000 >= PAGEABLE_MIN_ELEMENTS) };
    // Room for one weight's state: the other two stay on the host.
    let paged = Paged::new(adamw(), Device::flex(), one_state);
    let stats = paged.stats();
    let _ = train(&device, ModuleOptimizer::from(paged), 5);
    assert_eq!(stats.resident_bytes(), one_state);
    assert!(stats.peak_resident_bytes() <= stats.budget() + one_state);
    // Unlimited: all three resident, nothing moved.
    let paged = Paged::new(adamw(), Device::flex(), usize::MAX);
    let stats = paged.stats();
    let _ = train(&device, ModuleOptimizer::from(paged), 5);
    assert_eq!(stats.resident_bytes(), 3 * one_state);
    assert_eq!(
        (stats.bytes_moved(), stats.page_ins(), stats.page_outs()),
        (0, 0, 0)
    );
}

#[test]
fn paged_sgd_equals_sgd() {
    let device = Device::flex();
    let sgd = burn::optim::SgdConfig::new().build();
    let paged = Paged::new(sgd.clone(), Device::flex(), 0);
    let a = train(&device, ModuleOptimizer::from(paged), 3);
    let b = train(&device, ModuleOptimizer::from(sgd), 3);
    assert!(params(&a) == params(&b));
}

#[test]
fn paged_in_a_parameter_group() {
    use burn::module::ParamGroup;
    let device = Device::flex();
    // Layer `b` is optimized by (paged) SGD, the rest by AdamW.
    let group = ParamGroup::from_paths(vec!["b.weight", "b.bias"]);
    let sgd = burn::optim::SgdConfig::new().build();
    let with = |paged: bool| {
        let optim = ModuleOptimizer::from(adamw());
        let optim = if paged {
            optim.with_group(
                group.clone(),
                Paged::new(sgd.clone(), Device::flex(), 0),
                None,
            )
        } else {
            optim.with_group(group.clone(), sgd.clone(), None)
        };
        params(&train(&device, optim, 5))
    };
    let (paged, plain) = (with(true), with(false));
    assert!(paged == plain);
    // The group took effect: AdamW alone gives other weights for `b` (and so, through the
    // backward pass, for the others too after the first step).
    let adamw_only = params(&train(&device, ModuleOptimizer::from(adamw()), 5));
    assert!(adamw_only[2] != plain[2] && adamw_only[3] != plain[3]);
}
