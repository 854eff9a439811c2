//! Gradient checkpointing changes what a training step keeps: after the forward pass of a QLoRA
//! model (NF4 base, LoRA on every linear) on a checkpointing autodiff device, the autodiff graph
//! holds fewer heap bytes than on a plain one, and the gradients are the same. Live bytes are
//! counted by a global allocator (one test in this binary, so nothing else allocates meanwhile).
//! If `gradient_checkpointing()` were ignored anywhere on the path (the device, the model's
//! fused ops), the two would hold the same.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_llama::LlamaForCausalLM;
use qlora_nf4::QuantConfig;
use qlora_nn::{LoraApplier, PeftAdapter};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
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

fn golden(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(p)
}

/// Bytes the graph holds after the forward pass and loss, and the LoRA gradients.
fn step(device: &Device) -> (isize, Vec<Vec<f32>>) {
    let applier = LoraApplier::base_only(Some(QuantConfig::qlora()), device);
    let mut model = LlamaForCausalLM::load_hf(golden("tiny-llama"), &applier).unwrap();
    let adapter = PeftAdapter::load(golden("tiny-llama-lora"), device).unwrap();
    model.load_adapter(&adapter, "default").unwrap();
    let (b, t) = (4, 128);
    let ids: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % 250) as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let labels = ids.clone();
    let before = LIVE.load(Ordering::Relaxed);
    let loss = model.loss(ids, labels);
    let held = LIVE.load(Ordering::Relaxed) - before;
    let grads = loss.backward();
    let g = model
        .linears()
        .into_iter()
        .flat_map(|(_, layer)| {
            let a = layer.adapter("default").unwrap();
            [&a.lora_a, &a.lora_b].map(|p| {
                p.val()
                    .grad(&grads)
                    .expect("gradient")
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            })
        })
        .collect();
    (held, g)
}

#[test]
fn checkpointing_holds_fewer_bytes_after_the_forward_pass_and_the_same_gradients() {
    let (plain, g_plain) = step(&Device::flex().autodiff());
    let (ckpt, g_ckpt) = step(&Device::flex().autodiff().gradient_checkpointing());
    eprintln!("held after forward: plain {plain} B, checkpointed {ckpt} B");
    assert!(
        (ckpt as f64) < 0.95 * plain as f64,
        "checkpointed graph holds {ckpt} B, plain {plain} B"
    );
    for (a, b) in g_plain.iter().zip(&g_ckpt) {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 1e-5 * scale,
            "gradient differs by {err} (scale {scale})"
        );
    }
}
