//! The fused QLoRA linear (`QLoraLinear::forward` with one adapter in effect, through
//! `qlora_fused::nf4_lora_linear`) against the same layer composed of separate ops (the NF4
//! linear, the seeded dropout, the adapter's two products and the sums): outputs and the
//! gradients of the input, `A`, `B` and a trained bias, with and without dropout, with the base
//! product skipped, with an untracked input, and with several adapters (which stay composed).

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};
use qlora_backend::{QuantConfig, nf4_linear, nf4_linear_output_unused};
use qlora_nn::{InitLoraWeights, LoraAdapter, QLoraLinear};
use qlora_testenv::compare::assert_close;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// A quantized `[in, out]` layer with a bias and one adapter of rank `r` (B non-zero).
fn layer(device: &Device, [inp, out]: [usize; 2], r: usize, dropout: f64) -> QLoraLinear {
    let base = LinearConfig::new(inp, out).init(device);
    let mut layer = QLoraLinear::quantize("proj", base, QuantConfig::qlora()).unwrap();
    layer.lora.add(
        "default",
        LoraAdapter::new([inp, out], r, 2.0, dropout, InitLoraWeights::Random, device),
    );
    layer
}

/// The composed layer: base (or its unread stand-in) + bias + the adapter's own forward.
fn composed(layer: &QLoraLinear, x: Tensor<3>, base: bool) -> Tensor<3> {
    let mut y = if base {
        nf4_linear(x.clone(), &layer.base)
    } else {
        nf4_linear_output_unused(x.clone(), &layer.base)
    };
    if let Some(b) = &layer.bias {
        y = y + b.val().unsqueeze();
    }
    let (_, adapter) = layer.lora.unmerged_active().next().unwrap();
    y + adapter.forward(x)
}

/// Output and gradients (x, A, B, bias) of `forward` for a loss that weights every output.
fn run(
    layer: &QLoraLinear,
    x: &Tensor<3>,
    device: &Device,
    seed: u64,
    forward: impl Fn(&QLoraLinear, Tensor<3>) -> Tensor<3>,
) -> [Vec<f32>; 5] {
    device.seed(seed);
    let x = x.clone().require_grad();
    let y = forward(layer, x.clone());
    let dims = y.dims();
    let weights = Tensor::<1, Int>::arange(0..(dims.iter().product::<usize>() as i64), device)
        .float()
        .reshape(dims)
        .mul_scalar(0.01)
        .cos();
    let grads = (y.clone() * weights).sum().backward();
    let (_, a) = layer.lora.unmerged_active().next().unwrap();
    let grad = |p: &Param<Tensor<2>>| values(p.grad(&grads).unwrap());
    [
        values(y),
        values(x.grad(&grads).unwrap()),
        grad(&a.lora_a),
        grad(&a.lora_b),
        layer
            .bias
            .as_ref()
            .and_then(|b| b.grad(&grads))
            .map(values)
            .unwrap_or_default(),
    ]
}

fn assert_same(got: &[Vec<f32>; 5], want: &[Vec<f32>; 5], what: &str) {
    for (i, name) in ["y", "dx", "dA", "dB", "dbias"].iter().enumerate() {
        assert_eq!(got[i].len(), want[i].len(), "{what}: {name} length");
        assert!(
            got[i].iter().all(|v| v.is_finite()),
            "{what}: {name} finite"
        );
        assert_close(&got[i], &want[i], 1e-5, &format!("{what}: {name}"));
    }
}

#[test]
fn fused_layer_matches_the_composed_ops_with_and_without_dropout() {
    let device = Device::flex().autodiff();
    // 70 rows: past the NF4 kernels' many-rows threshold; odd widths.
    for (dropout, dims) in [(0.0, [96, 72]), (0.25, [96, 72]), (0.1, [64, 130])] {
        let mut l = layer(&device, dims, 8, dropout);
        l.bias = l.bias.map(|b| b.set_require_grad(true));
        let x = Tensor::<3>::random([2, 35, dims[0]], Distribution::Normal(0.0, 1.0), &device);
        let what = format!("dropout {dropout}, {dims:?}");
        let fused = run(&l, &x, &device, 11, |l, x| l.forward(x));
        let reference = run(&l, &x, &device, 11, |l, x| composed(l, x, true));
        assert_same(&fused, &reference, &what);
        let fused = run(&l, &x, &device, 5, |l, x| l.forward_output_unused(x));
        let reference = run(&l, &x, &device, 5, |l, x| composed(l, x, false));
        assert_same(&fused, &reference, &format!("{what}, base unused"));
    }
}

#[test]
fn fused_layer_with_few_rows_and_an_untracked_input() {
    let device = Device::flex().autodiff();
    let l = layer(&device, [48, 40], 4, 0.0);
    let x = Tensor::<3>::random([1, 3, 48], Distribution::Normal(0.0, 1.0), &device);
    let fused = run(&l, &x, &device, 2, |l, x| l.forward(x));
    let reference = run(&l, &x, &device, 2, |l, x| composed(l, x, true));
    assert_same(&fused, &reference, "3 rows");

    // An input without a gradient (the first layer's, from a frozen embedding): the adapters
    // still get theirs.
    let grads = l.forward(x.clone()).sum().backward();
    let (_, a) = l.lora.unmerged_active().next().unwrap();
    let want = composed(&l, x, true).sum().backward();
    for (p, name) in [(&a.lora_a, "dA"), (&a.lora_b, "dB")] {
        assert_close(
            &values(p.grad(&grads).unwrap()),
            &values(p.grad(&want).unwrap()),
            1e-5,
            name,
        );
    }
}

#[test]
fn fused_layer_in_inference_and_with_several_adapters() {
    // No autodiff: the same output as the composed ops.
    let device = Device::flex();
    let mut l = layer(&device, [32, 24], 4, 0.1);
    let x = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device);
    assert_close(
        &values(l.forward(x.clone())),
        &values(composed(&l, x.clone(), true)),
        1e-5,
        "inference",
    );
    // A second adapter: the layer adds both (the composed path).
    l.lora.add(
        "second",
        LoraAdapter::new([32, 24], 2, 1.0, 0.0, InitLoraWeights::Random, &device),
    );
    let second = l.lora.get("second").unwrap().forward(x.clone());
    assert_close(
        &values(l.forward(x.clone())),
        &values(composed(&l, x, true) + second),
        1e-5,
        "two adapters",
    );
}
