//! `qlora_nn::checkpoint` on a module of the user's own (Burn's `Linear`s, fully trained, and a
//! LoRA layer with dropout): the output, the input's gradient and every parameter's gradient
//! are the bits of the same block run without it; parameters used inside and outside the block
//! sum their gradients; a block that trains nothing on an untracked input is run as it is; and
//! a forward pass that captures a tracked tensor is refused when it is built.

use std::sync::Mutex;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};
use qlora_nn::{GradientCheckpointing, LoraLinearConfig, QLoraLinear, checkpoint, checkpoint_with};

/// The device's generator is the process's: one test at a time draws from it.
static GENERATOR: Mutex<()> = Mutex::new(());

#[derive(Module, Debug)]
struct Mlp {
    up: Linear,
    down: Linear,
    lora: QLoraLinear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        let lora = LoraLinearConfig::new(16, 16)
            .with_r(4)
            .with_lora_alpha(8.0)
            .with_lora_dropout(0.25);
        Self {
            up: LinearConfig::new(16, 32).init(device),
            down: LinearConfig::new(32, 16).init(device),
            lora: qlora_nn::QLoraLinearConfig::new(lora).init(device),
        }
    }

    /// `[b, t, 16]` → `[b, t, 16]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = burn::tensor::activation::gelu(self.up.forward(x.clone()));
        self.down.forward(h) + self.lora.forward(x)
    }
}

fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Output, input gradient and parameter gradients of `blocks` applied twice in a row (the
/// second use of `up` outside the block), each block checkpointed in `mode`.
fn run(mlp: &Mlp, mode: GradientCheckpointing, device: &Device) -> Vec<Vec<u32>> {
    device.seed(3);
    let x = Tensor::<3>::random([2, 5, 16], Distribution::Default, device).require_grad();
    let y = checkpoint_with(mode, mlp, x.clone(), |m: &Mlp, x| m.forward(x));
    let y = checkpoint_with(mode, mlp, y, |m: &Mlp, x| m.forward(x));
    let z = mlp.up.forward(y.clone());
    let grads = (z.sum() + y.powi_scalar(2).sum()).backward();
    let mut out = vec![bits(x.grad(&grads).expect("input gradient"))];
    out.push(bits(mlp.up.weight.val().grad(&grads).unwrap()));
    out.push(bits(mlp.down.weight.val().grad(&grads).unwrap()));
    let a = mlp.lora.lora.get("default").unwrap();
    out.push(bits(a.lora_a.val().grad(&grads).unwrap()));
    out.push(bits(a.lora_b.val().grad(&grads).unwrap()));
    out
}

#[test]
fn a_checkpointed_block_gives_the_same_bits_as_the_block() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut mlp = Mlp::new(&device);
    // A nonzero B, so that A's gradient is not zero.
    let a = mlp.lora.lora.get_mut("default").unwrap();
    a.lora_b = a
        .lora_b
        .clone()
        .map(|b| Tensor::random(b.shape(), Distribution::Default, &device).require_grad());
    // Burn's `Linear` initialises its weights lazily, at their first use, from the generator:
    // a first run does that, so that the runs compared draw the same numbers.
    run(&mlp, GradientCheckpointing::Off, &device);
    let plain = run(&mlp, GradientCheckpointing::Off, &device);
    // Equal bits would also pass on NaN.
    assert!(
        plain
            .iter()
            .flatten()
            .all(|b| f32::from_bits(*b).is_finite())
    );
    for mode in [GradientCheckpointing::Block, GradientCheckpointing::Offload] {
        let ckpt = run(&mlp, mode, &device);
        for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
            assert!(a == b, "{mode:?}: gradient {i} differs");
        }
    }
}

#[test]
fn a_block_that_trains_nothing_is_run_as_it_is() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mlp = Mlp::new(&device).no_grad();
    let x = Tensor::<3>::ones([1, 2, 16], &device);
    let y = checkpoint(&mlp, x.clone(), |m: &Mlp, x| m.forward(x));
    assert!(!y.is_tracked());
    assert_eq!(bits(y), bits(mlp.forward(x)));
}

#[test]
#[should_panic(expected = "captured")]
fn a_forward_pass_that_captures_a_tracked_tensor_is_refused() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mlp = Mlp::new(&device);
    let w = Tensor::<3>::ones([1, 1, 16], &device).require_grad();
    let x = Tensor::<3>::ones([1, 2, 16], &device);
    let _ = checkpoint(&mlp, x, move |m: &Mlp, x| m.forward(x) * w.clone());
}

#[test]
fn a_checkpoint_inside_a_checkpointed_block_reads_its_output() {
    use std::sync::atomic::{AtomicU32, Ordering};
    static OUTER: AtomicU32 = AtomicU32::new(0);
    static INNER: AtomicU32 = AtomicU32::new(0);
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mlp = Mlp::new(&device);
    let x = Tensor::<3>::ones([1, 2, 16], &device).require_grad();
    // Each closure counts the passes it runs in, and those in which it may skip its output.
    let y = checkpoint(&mlp, x.clone(), |m: &Mlp, x| {
        OUTER.fetch_add(1 + 10 * qlora_nn::recomputing() as u32, Ordering::SeqCst);
        checkpoint(m, x, |m: &Mlp, x| {
            INNER.fetch_add(1 + 10 * qlora_nn::recomputing() as u32, Ordering::SeqCst);
            m.forward(x)
        })
    });
    let grads = y.sum().backward();
    assert!(x.grad(&grads).is_some());
    // The outer block ran twice, recomputed once; the inner one twice, its output read both times.
    assert_eq!(OUTER.load(Ordering::SeqCst), 12);
    assert_eq!(INNER.load(Ordering::SeqCst), 2);
}

#[test]
fn a_block_whose_output_ignores_its_input_gives_the_input_zeros() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mlp = Mlp::new(&device);
    let x = Tensor::<3>::ones([1, 2, 16], &device).require_grad();
    let y = checkpoint(&mlp, x.clone(), |m: &Mlp, x| m.up.forward(x.zeros_like()));
    let grads = y.sum().backward();
    let g = x.grad(&grads).expect("the input's gradient");
    assert!(bits(g).iter().all(|b| f32::from_bits(*b) == 0.0));
}

#[test]
#[should_panic(expected = "Balanced")]
fn block_checkpointing_on_a_balanced_device_is_refused() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff().gradient_checkpointing();
    let mlp = Mlp::new(&device);
    let x = Tensor::<3>::ones([1, 2, 16], &device);
    let _ = checkpoint(&mlp, x, |m: &Mlp, x| m.forward(x));
}

#[test]
fn a_trained_bias_gets_its_gradient_when_the_output_is_unused() {
    let _g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mut l = Mlp::new(&device).lora;
    l.bias = l.bias.map(|b| b.set_require_grad(true));
    let x = Tensor::<3>::ones([1, 2, 16], &device);
    let g = Tensor::<3>::random([1, 2, 16], Distribution::Default, &device);
    let grad_of_bias = |y: Tensor<3>| {
        let grads = (y * g.clone()).sum().backward();
        bits(
            l.bias
                .as_ref()
                .unwrap()
                .val()
                .grad(&grads)
                .expect("a bias gradient"),
        )
    };
    assert_eq!(
        grad_of_bias(l.forward(x.clone())),
        grad_of_bias(l.forward_output_unused(x))
    );
}
