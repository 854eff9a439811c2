//! The fused block ops (`rms_norm`, `swiglu`, `geglu_tanh`, `rope` of `burn_qlora::fused`) against the same
//! functions composed of Burn tensor ops, on Flex (the fused host kernels) and on wgpu where an
//! adapter exists (one CubeCL kernel a pass): outputs and input gradients under a
//! non-uniform upstream gradient, and the norm's weight gradient.

use burn::tensor::activation::silu;
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use burn_qlora::fused::{geglu_tanh, rms_norm, rope, swiglu};

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{assert_close, vals, values};

#[path = "support/wgpu.rs"]
mod wgpu;

fn tensor<const D: usize>(shape: [usize; D], seed: u64, scale: f32, d: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values(shape.iter().product(), seed, scale), shape),
        d,
    )
}

/// Output and gradients of `f` and of `reference` on the same inputs (all tracked).
fn compare<const D: usize, const N: usize>(
    device: &Device,
    inputs: [(Vec<usize>, u64, f32); N],
    f: impl Fn(&[Tensor<D>]) -> Tensor<D>,
    reference: impl Fn(&[Tensor<D>]) -> Tensor<D>,
    what: &str,
) {
    let ad = device.clone().autodiff();
    let run = |g: &dyn Fn(&[Tensor<D>]) -> Tensor<D>| {
        let xs: Vec<Tensor<D>> = inputs
            .iter()
            .map(|(shape, seed, scale)| {
                let shape: [usize; D] = shape.clone().try_into().unwrap();
                tensor(shape, *seed, *scale, &ad).require_grad()
            })
            .collect();
        let y = g(&xs);
        let upstream = tensor(y.dims(), 99, 1.0, &ad);
        let out = vals(y.clone());
        let grads = (y * upstream).sum().backward();
        let dx: Vec<Vec<f32>> = xs.iter().map(|x| vals(x.grad(&grads).unwrap())).collect();
        (out, dx)
    };
    let (ours, ours_grads) = run(&f);
    let (want, want_grads) = run(&reference);
    assert_close(&ours, &want, 1e-5, &format!("{what}: out"));
    for (i, (o, w)) in ours_grads.iter().zip(&want_grads).enumerate() {
        assert_close(o, w, 1e-4, &format!("{what}: grad of input {i}"));
    }
}

fn check(device: &Device) {
    // RMSNorm: rows of 300 (a width that is no vector multiple), weight tracked too.
    let eps = 1e-5f32;
    compare::<3, 2>(
        device,
        [(vec![3, 77, 300], 1, 2.0), (vec![1, 1, 300], 2, 1.0)],
        |x| rms_norm(x[0].clone(), x[1].clone().reshape([300]), eps),
        |x| {
            let rms = x[0].clone().square().mean_dim(2).add_scalar(eps).sqrt();
            (x[0].clone() / rms) * x[1].clone()
        },
        "rms_norm",
    );
    // SwiGLU, including large |gate| where the sigmoid saturates.
    compare::<2, 2>(
        device,
        [(vec![130, 77], 3, 12.0), (vec![130, 77], 4, 1.0)],
        |x| swiglu(x[0].clone(), x[1].clone()),
        |x| silu(x[0].clone()) * x[1].clone(),
        "swiglu",
    );
    // GeGLU with tanh-GELU (Gemma), gates from −12 to 12: the tanh saturates at both ends.
    compare::<2, 2>(
        device,
        [(vec![130, 77], 11, 12.0), (vec![130, 77], 12, 1.0)],
        |x| geglu_tanh(x[0].clone(), x[1].clone()),
        |x| {
            let g = x[0].clone();
            let inner = (g.clone() + g.clone().powi_scalar(3) * 0.044715)
                * (2.0 / std::f64::consts::PI).sqrt();
            (g * 0.5 * (inner.tanh() + 1.0)) * x[1].clone()
        },
        "geglu_tanh",
    );
    // RoPE with tables whose halves differ (the adjoint must not assume HF's repeated halves).
    let (t, d) = (19, 12);
    let cos = tensor([t, d], 5, 1.0, device);
    let sin = tensor([t, d], 6, 1.0, device);
    let (cos, sin) = (
        Tensor::<2>::from_data(cos.into_data(), &device.clone().autodiff()),
        Tensor::<2>::from_data(sin.into_data(), &device.clone().autodiff()),
    );
    compare::<4, 1>(
        device,
        [(vec![2, 3, t, d], 7, 1.0)],
        |x| rope(x[0].clone(), cos.clone(), sin.clone()),
        |x| {
            let x = x[0].clone();
            let x1 = x.clone().narrow(3, 0, d / 2);
            let x2 = x.clone().narrow(3, d / 2, d / 2);
            let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
            x * cos.clone().reshape([1, 1, t, d]) + rotated * sin.clone().reshape([1, 1, t, d])
        },
        "rope",
    );
    // Partial RoPE (Phi-3): tables of width 8 rotate the leading 8 of 12; the rest pass.
    let w = 8;
    let cos = tensor([t, w], 8, 1.0, device);
    let sin = tensor([t, w], 9, 1.0, device);
    let (cos, sin) = (
        Tensor::<2>::from_data(cos.into_data(), &device.clone().autodiff()),
        Tensor::<2>::from_data(sin.into_data(), &device.clone().autodiff()),
    );
    compare::<4, 1>(
        device,
        [(vec![2, 3, t, d], 10, 1.0)],
        |x| rope(x[0].clone(), cos.clone(), sin.clone()),
        |x| {
            let x = x[0].clone();
            let (rot, pass) = (x.clone().narrow(3, 0, w), x.narrow(3, w, d - w));
            let x1 = rot.clone().narrow(3, 0, w / 2);
            let x2 = rot.clone().narrow(3, w / 2, w / 2);
            let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
            let y = rot * cos.clone().reshape([1, 1, t, w])
                + rotated * sin.clone().reshape([1, 1, t, w]);
            Tensor::cat(vec![y, pass], 3)
        },
        "partial rope",
    );
}

#[test]
fn block_ops_on_flex() {
    check(&Device::flex());
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn block_ops_on_wgpu() {
    check(&wgpu::device(DeviceKind::default()));
}
