//! Padding-free attention (`burn_qlora::fused::causal_attention_segmented`): samples
//! concatenated in a row, each attending only inside itself, equal to each sample computed
//! alone with `causal_attention` (or `causal_attention_windowed`), outputs and gradients in q,
//! k and v, on Flex (the host kernels, which skip the keys before a block's samples) and on
//! wgpu where an adapter exists (the tiled CubeCL kernels, which read the starts per row; the
//! reference there is the same kernels without starts, held to Burn's `attention` by
//! `tests/causal_attention.rs`).

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use burn_qlora::fused::{causal_attention, causal_attention_segmented, causal_attention_windowed};

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{assert_close, vals, values};

#[path = "support/wgpu.rs"]
mod wgpu;

/// Sample lengths per batch row (each row's lengths sum to the same length).
const ROWS: [&[usize]; 2] = [&[40, 1, 59, 30], &[77, 53]];

fn starts(device: &Device) -> Tensor<2, Int> {
    let mut v = Vec::new();
    for lens in ROWS {
        let mut at = 0i64;
        for &n in lens {
            v.extend(std::iter::repeat_n(at, n));
            at += n as i64;
        }
    }
    let t = v.len() / ROWS.len();
    Tensor::from_data(TensorData::new(v, [ROWS.len(), t]), device)
}

fn check(device: &Device, [h, kvh, d]: [usize; 3], window: Option<usize>) {
    let what = format!("h {h} kvh {kvh} d {d} window {window:?}");
    let (b, t): (usize, usize) = (ROWS.len(), ROWS[0].iter().sum());
    let scale = 1.0 / (d as f32).sqrt();
    let ad = device.clone().autodiff();
    let make = |dev: &Device| {
        let x = |n: [usize; 4], seed| {
            Tensor::<4>::from_data(
                TensorData::new(values(n.iter().product(), seed, 1.5), n),
                dev,
            )
            .require_grad()
        };
        let g = Tensor::<4>::from_data(
            TensorData::new(values(b * h * t * d, 4, 1.0), [b, h, t, d]),
            dev,
        );
        (
            x([b, h, t, d], 1),
            x([b, kvh, t, d], 2),
            x([b, kvh, t, d], 3),
            g,
        )
    };

    let (q, k, v, g) = make(&ad);
    let ours =
        causal_attention_segmented(q.clone(), k.clone(), v.clone(), starts(&ad), scale, window);
    let ours_out = vals(ours.clone());
    let grads = (ours * g).sum().backward();
    let ours_grads = [&q, &k, &v].map(|x| vals(x.grad(&grads).unwrap()));

    // Each sample alone, then put back in place.
    let (q, k, v, g) = make(&ad);
    let mut rows = Vec::new();
    for (bi, lens) in ROWS.iter().enumerate() {
        let mut parts = Vec::new();
        let mut at = 0;
        for &n in *lens {
            let cut = |x: &Tensor<4>| x.clone().narrow(0, bi, 1).narrow(2, at, n);
            let (qs, ks, vs) = (cut(&q), cut(&k), cut(&v));
            parts.push(match window {
                Some(w) => causal_attention_windowed(qs, ks, vs, scale, w),
                None => causal_attention(qs, ks, vs, scale),
            });
            at += n;
        }
        rows.push(Tensor::cat(parts, 2));
    }
    let want = Tensor::cat(rows, 0);
    let want_out = vals(want.clone());
    let grads = (want * g).sum().backward();
    let want_grads = [&q, &k, &v].map(|x| vals(x.grad(&grads).unwrap()));

    assert_close(&ours_out, &want_out, 1e-5, &format!("{what}: out"));
    for (name, (o, w)) in ["dq", "dk", "dv"]
        .iter()
        .zip(ours_grads.iter().zip(&want_grads))
    {
        assert_close(o, w, 1e-4, &format!("{what}: {name}"));
    }
}

fn every_case(device: &Device) {
    for (heads, window) in [
        ([6, 2, 16], None),
        ([4, 4, 8], None),
        ([4, 2, 8], Some(17)),
        ([2, 1, 8], Some(100)),
    ] {
        check(device, heads, window);
    }
}

#[test]
fn padding_free_attention_equals_each_sample_alone_on_flex() {
    every_case(&Device::flex());
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn padding_free_attention_equals_each_sample_alone_on_wgpu() {
    every_case(&wgpu::device(DeviceKind::default()));
}

#[test]
#[should_panic(expected = "starts must be [batch, len]")]
fn starts_of_another_shape_are_refused() {
    let d = Device::flex();
    let q = Tensor::<4>::zeros([1, 2, 4, 8], &d);
    let starts = Tensor::<2, Int>::zeros([1, 3], &d);
    let _ = causal_attention_segmented(q.clone(), q.clone(), q, starts, 0.5, None);
}
