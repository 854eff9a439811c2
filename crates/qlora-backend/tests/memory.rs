//! A forward and backward pass through a stack of NF4 linears on Flex keeps no dense copy of
//! any weight alive: live heap bytes are counted by a global allocator (one test in this binary,
//! so nothing else allocates concurrently).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use burn::tensor::{Device, Tensor, TensorData};
use qlora_backend::{Nf4Weight, nf4_linear};
use qlora_nf4::{QuantConfig, QuantizedTensor};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now =
                LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: isize = 1 << 20;

#[test]
fn a_stack_of_nf4_linears_keeps_no_dense_weight() {
    let device = Device::flex().autodiff();
    let (layers, d, m) = (4, 2048, 8);
    let dense_bytes = (d * d * 4) as isize; // 16 MiB per weight
    let weights: Vec<Nf4Weight> = (0..layers)
        .map(|l| {
            let w: Vec<f32> = (0..d * d)
                .map(|i| (((i * 7 + l * 13) % 1001) as f32 / 1001.0 - 0.5) * 0.05)
                .collect();
            let q = QuantizedTensor::quantize("w", &w, &[d, d], QuantConfig::qlora()).unwrap();
            Nf4Weight::from_quantized(&q, "w", &device).unwrap()
        })
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(vec![0.01f32; m * d], [m, d]), &device)
        .require_grad();

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut h = x.clone();
    for w in &weights {
        h = nf4_linear(h, w).tanh();
    }
    let after_forward = LIVE.load(Ordering::Relaxed);
    let grads = h.sum().backward();
    let dx = x.grad(&grads).unwrap();
    assert_eq!(dx.dims(), [m, d]);
    let peak = PEAK.load(Ordering::Relaxed);

    // The graph holds activations (a few [8, 2048] tensors per layer, ~64 KiB each), never a
    // 16 MiB dense weight; the panels being multiplied are transient (at most a few MiB).
    let kept = after_forward - before;
    assert!(
        kept < 2 * MIB,
        "forward kept {kept} bytes alive (a dense weight is {dense_bytes})"
    );
    let transient = peak - before;
    assert!(
        transient < dense_bytes / 2,
        "peak grew by {transient} bytes (a dense weight is {dense_bytes})"
    );
}
