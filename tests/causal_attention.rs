//! The causal attention op (`burn_qlora::fused::causal_attention`) against Burn's own
//! `attention` with the kv heads repeated (`repeat_kv`), on Flex (the fused host kernels) and
//! on wgpu where an adapter exists (the tiled CubeCL kernels): outputs and the gradients in
//! q, k and v under a non-uniform upstream gradient, for grouped-query heads, sequences that
//! cross the kernel's row blocks, and a decoding step against a longer cache; and the sliding
//! window (`causal_attention_windowed`) against the same with an explicit mask.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, DeviceKind, Int, Tensor, TensorData};
use burn_qlora::fused::{causal_attention, causal_attention_windowed};

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

/// `true` where query `i` (at key position `p = i + tk − tq`) must not see key `j`: `j > p`, or
/// `j ≤ p − window` (transformers' sliding-window mask), `[b, h, tq, tk]`.
fn window_mask(dims: [usize; 4], window: usize, dev: &Device) -> Tensor<4, Bool> {
    let [b, h, tq, tk] = dims;
    let pos = Tensor::<1, Int>::arange(0..tq as i64, dev)
        .reshape([tq, 1])
        .add_scalar(tk as i64 - tq as i64)
        .expand([tq, tk]);
    let key = Tensor::<1, Int>::arange(0..tk as i64, dev)
        .reshape([1, tk])
        .expand([tq, tk]);
    let future = key.clone().greater(pos.clone());
    let before = key.lower_equal(pos.sub_scalar(window as i64));
    future
        .bool_or(before)
        .reshape([1, 1, tq, tk])
        .expand([b, h, tq, tk])
}

/// One case: `q` `[b, h, tq, d]`, `k`/`v` `[b, kvh, tk, d]`, in a sliding window or not.
fn check_case(device: &Device, [b, h, kvh, tq, tk, d]: [usize; 6], window: Option<usize>) {
    let what = format!("b {b} h {h} kvh {kvh} tq {tq} tk {tk} d {d} window {window:?}");
    let ours_of = |q, k, v, scale| match window {
        Some(w) => causal_attention_windowed(q, k, v, scale, w),
        None => causal_attention(q, k, v, scale),
    };
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

    let mut ours = run_on(device, [b, h, kvh, tq, tk, d], window).into_iter();
    let ours_out = ours.next().expect("the output");
    let ours_grads: Vec<Vec<f32>> = ours.collect();

    let (q, k, v, g) = make(&ad);
    let options = AttentionModuleOptions {
        scale: Some(scale as f64),
        softcap: None,
        is_causal: window.is_none() && tq > 1,
    };
    let groups = h / kvh;
    let mask = window.map(|w| window_mask([b, h, tq, tk], w, &ad));
    let want = attention(
        q.clone(),
        repeat_kv(k.clone(), groups),
        repeat_kv(v.clone(), groups),
        mask,
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
        &vals(ours_of(q, k, v, scale)),
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
        // Head width 64: the Cube kernels' shared tiles hold 31 key rows of it, so 70 rows
        // cross tiles of keys and of queries (32 rows a cube).
        [1, 2, 1, 70, 70, 64],
    ] {
        check_case(device, case, None);
    }
    // Windows narrower than a row block, wider than one, wider than the sequence (plain causal
    // attention), and a decoding step and a chunk over a cache longer than the window.
    for (case, window) in [
        ([2, 6, 2, 130, 130, 16], 17),
        ([1, 4, 4, 130, 130, 8], 100),
        ([1, 4, 2, 20, 20, 8], 64),
        ([2, 4, 2, 1, 37, 8], 8),
        ([1, 3, 1, 3, 40, 8], 5),
    ] {
        check_case(device, case, Some(window));
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

/// Output and gradients in q, k and v of one call on `device` (autodiff made from it), inputs
/// and upstream gradient from the seeds `check_case`'s reference uses.
fn run_on(
    device: &Device,
    [b, h, kvh, tq, tk, d]: [usize; 6],
    window: Option<usize>,
) -> Vec<Vec<f32>> {
    let ad = device.clone().autodiff();
    let t = |n: [usize; 4], seed| {
        Tensor::<4>::from_data(
            TensorData::new(values(n.iter().product(), seed, 1.5), n),
            &ad,
        )
        .require_grad()
    };
    let (q, k, v) = (
        t([b, h, tq, d], 1),
        t([b, kvh, tk, d], 2),
        t([b, kvh, tk, d], 3),
    );
    let g = Tensor::<4>::from_data(
        TensorData::new(values(b * h * tq * d, 4, 1.0), [b, h, tq, d]),
        &ad,
    );
    let scale = 1.0 / (d as f32).sqrt();
    let out = match window {
        Some(w) => causal_attention_windowed(q.clone(), k.clone(), v.clone(), scale, w),
        None => causal_attention(q.clone(), k.clone(), v.clone(), scale),
    };
    let grads = (out.clone() * g).sum().backward();
    let mut all = vec![vals(out)];
    all.extend([&q, &k, &v].map(|x| vals(x.grad(&grads).unwrap())));
    all
}

#[test]
#[cfg_attr(qlora_no_vulkan, ignore = "cannot run here: no Vulkan driver")]
fn wgpu_agrees_with_flex_where_burn_has_no_reference() {
    let wgpu = wgpu::device(DeviceKind::default());
    // More queries than keys: the first rows see no key and give 0 (the op's definition, which
    // Flex's kernel is tested against); a window longer than any index (no window at all).
    for (case, window) in [
        ([1, 2, 1, 5, 3, 8], None),
        ([2, 4, 2, 40, 40, 8], Some(usize::MAX)),
        ([2, 4, 2, 40, 40, 8], Some(40)),
    ] {
        let (ours, want) = (
            run_on(&wgpu, case, window),
            run_on(&Device::flex(), case, window),
        );
        for (name, (o, w)) in ["out", "dq", "dk", "dv"].iter().zip(ours.iter().zip(&want)) {
            let tol = if *name == "out" { 1e-5 } else { 1e-4 };
            assert_close(o, w, tol, &format!("{case:?} window {window:?}: {name}"));
        }
        if case[3] > case[4] {
            let [_, h, _, tq, tk, d] = case;
            let blind = tq - tk; // rows 0 .. tq − tk of each head see no key
            for head in 0..h {
                let rows = &ours[0][(head * tq) * d..(head * tq + blind) * d];
                assert!(rows.iter().all(|&x| x == 0.0), "rows with no key: {rows:?}");
            }
        }
    }
}
