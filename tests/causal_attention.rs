//! The causal attention op (`burn_qlora::fused::causal_attention`) against Burn's own
//! `attention` with the kv heads repeated (`repeat_kv`), on Flex (the fused host kernels) and
//! on wgpu where an adapter exists (the default bodies on CubeCL): outputs and the gradients in
//! q, k and v under a non-uniform upstream gradient, for grouped-query heads, sequences that
//! cross the kernel's row blocks, and a decoding step against a longer cache.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use burn_qlora::fused::causal_attention;

#[path = "support/numeric.rs"]
mod numeric;
use numeric::{assert_close, vals, values};

#[path = "support/wgpu.rs"]
mod wgpu;

/// `[b, kvh, s, d]` → `[b, kvh · groups, s, d]` with Burn's tensor API.
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    let [b, kvh, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, groups, s, d])
        .reshape([b, kvh * groups, s, d])
}

/// One case: `q` `[b, h, tq, d]`, `k`/`v` `[b, kvh, tk, d]`.
fn check_case(device: &Device, [b, h, kvh, tq, tk, d]: [usize; 6]) {
    let what = format!("b {b} h {h} kvh {kvh} tq {tq} tk {tk} d {d}");
    let scale = 1.0 / (d as f32).sqrt();
    let ad = device.clone().autodiff();
    let make = |dev: &Device| {
        let t = |n: [usize; 4], seed| {
            let x = Tensor::<4>::from_data(
                TensorData::new(values(n.iter().product(), seed, 1.5), n),
                dev,
            );
            if dev.is_autodiff() {
                x.require_grad()
            } else {
                x
            }
        };
        let g = Tensor::<4>::from_data(
            TensorData::new(values(b * h * tq * d, 4, 1.0), [b, h, tq, d]),
            dev,
        );
        (
            t([b, h, tq, d], 1),
            t([b, kvh, tk, d], 2),
            t([b, kvh, tk, d], 3),
            g,
        )
    };

    let (q, k, v, g) = make(&ad);
    let ours = causal_attention(q.clone(), k.clone(), v.clone(), scale);
    let ours_out = vals(ours.clone());
    let grads = (ours * g).sum().backward();
    let ours_grads = [&q, &k, &v].map(|t| vals(t.grad(&grads).unwrap()));

    let (q, k, v, g) = make(&ad);
    let options = AttentionModuleOptions {
        scale: Some(scale as f64),
        softcap: None,
        is_causal: tq > 1,
    };
    let groups = h / kvh;
    let want = attention(
        q.clone(),
        repeat_kv(k.clone(), groups),
        repeat_kv(v.clone(), groups),
        None,
        None,
        options,
    );
    let want_out = vals(want.clone());
    let grads = (want * g).sum().backward();
    let want_grads = [&q, &k, &v].map(|t| vals(t.grad(&grads).unwrap()));

    assert_close(&ours_out, &want_out, 1e-5, &format!("{what}: out"));
    for (name, (o, w)) in ["dq", "dk", "dv"]
        .iter()
        .zip(ours_grads.iter().zip(&want_grads))
    {
        assert_close(o, w, 1e-4, &format!("{what}: {name}"));
    }

    // Without autodiff: the same output.
    let (q, k, v, _) = make(device);
    assert_close(
        &vals(causal_attention(q, k, v, scale)),
        &want_out,
        1e-5,
        &format!("{what}: out, no autodiff"),
    );
}

fn check(device: &Device) {
    // Grouped-query heads and 130 positions (three row blocks of the host kernel, the last
    // partial); plain multi-head; a decoding step of 1 and a chunk of 3 queries after a cache
    // of 37 and 40 keys.
    for case in [
        [2, 6, 2, 130, 130, 16],
        [1, 4, 4, 64, 64, 8],
        [2, 4, 2, 1, 37, 8],
        [1, 3, 1, 3, 40, 8],
    ] {
        check_case(device, case);
    }
}

#[test]
fn causal_attention_on_flex() {
    check(&Device::flex());
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn causal_attention_on_wgpu() {
    check(&wgpu::device(DeviceKind::default()));
}

#[test]
#[should_panic(expected = "not a multiple of")]
fn heads_that_do_not_group_are_refused() {
    let d = Device::flex();
    let q = Tensor::<4>::zeros([1, 5, 4, 8], &d);
    let kv = Tensor::<4>::zeros([1, 2, 4, 8], &d);
    let _ = causal_attention(q, kv.clone(), kv, 0.5);
}
