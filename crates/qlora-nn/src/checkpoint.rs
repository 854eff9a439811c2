//! Block-level gradient checkpointing for any Burn module (Chen et al. 2016, *Training Deep
//! Nets with Sublinear Memory Cost*; what `transformers`' `gradient_checkpointing_enable()`
//! does to each decoder layer).
//!
//! [`checkpoint`] runs a block's forward pass without recording it (the block's trained
//! parameters detached, its input detached), so none of its activations is kept; the output
//! becomes one node of the graph ([`qlora_fused::recompute_in_backward`]) that keeps only the
//! block's input. In the backward pass the block is run again from that input on fresh leaves
//! (copies of the trained parameters that share their storage) and back-propagated on its own;
//! the gradients reach the input and the real parameters. Peak memory is then the kept inputs
//! of every block plus one block's activations, at the cost of a second forward pass of each
//! block.
//!
//! The recomputation is the same computation as the first pass: the same ops on the same
//! values, and the same dropout masks, because [`crate::dropout_seed`] replays the seeds the
//! first pass drew. Losses and gradients are the same as without checkpointing, to the bit on
//! the backends here (a backend whose kernels are not deterministic run to run would differ
//! as much as two runs of it do). A block that draws randomness another way (Burn's own
//! `Dropout` does, from the device's generator) would draw differently when recomputed:
//! use [`crate::dropout_seed`] with [`qlora_fused::seeded_dropout`] in a checkpointed block.

use std::sync::Arc;

use burn::backend::{DispatchTensor, Flex};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor};
use qlora_fused::{RecomputeBlock, Recomputed};

use crate::seed;

/// What a training step keeps for the backward pass of a checkpointed block
/// (`finetune --grad-checkpointing none|block|offload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradientCheckpointing {
    /// No recomputation: every activation is kept.
    #[default]
    Off,
    /// Each block keeps its input on its device and is recomputed in the backward pass
    /// (`transformers`' `gradient_checkpointing_enable()`).
    Block,
    /// As `Block`, with each kept input in host memory until the backward pass needs it
    /// (Unsloth's `use_gradient_checkpointing="unsloth"`): the device holds one block's
    /// activations and no per-block input. For a tensor already in host memory (Flex) this is
    /// `Block`.
    Offload,
}

impl GradientCheckpointing {
    /// Whether blocks are recomputed.
    pub fn is_on(self) -> bool {
        self != Self::Off
    }
}

/// `forward(module, x)`, with the activations inside `forward` recomputed in the backward pass
/// instead of kept (see the module docs); [`GradientCheckpointing::Block`].
///
/// - `module`: the block; its parameters that require a gradient are the trained ones
/// - `x`: `[..]` the block's input
/// - `forward`: the block's forward pass; it must be a function of the module, the input and
///   the dropout seeds it draws with [`crate::dropout_seed`]. Tensors it captures (positions,
///   masks, RoPE tables) must not be tracked.
/// - returns `forward(module, x)`, the same values
///
/// Off an autodiff device, or when neither `x` nor any parameter is tracked, or inside another
/// checkpointed block, this is `forward(module, x)` itself.
///
/// # Panics
///
/// When `forward` uses a tracked tensor it captured (API misuse: the gradient would be lost).
pub fn checkpoint<M, F, const D: usize>(module: &M, x: Tensor<D>, forward: F) -> Tensor<D>
where
    M: Module + Sync + 'static,
    F: Fn(&M, Tensor<D>) -> Tensor<D> + Send + Sync + 'static,
{
    checkpoint_with(GradientCheckpointing::Block, module, x, forward)
}

/// [`checkpoint`] in the given mode: `Off` is `forward(module, x)`, `Offload` keeps the input
/// in host memory.
pub fn checkpoint_with<M, F, const D: usize>(
    mode: GradientCheckpointing,
    module: &M,
    x: Tensor<D>,
    forward: F,
) -> Tensor<D>
where
    M: Module + Sync + 'static,
    F: Fn(&M, Tensor<D>) -> Tensor<D> + Send + Sync + 'static,
{
    if seed::taping() {
        return seed::nested(|| forward(module, x));
    }
    if !mode.is_on() || !x.is_autodiff() {
        return forward(module, x);
    }
    assert!(
        x.gradient_checkpointing_strategy() != Some(GradientCheckpointingStrategy::Balanced),
        "block checkpointing replaces Burn's op-level `Balanced` strategy: use a device \
         without `gradient_checkpointing()`"
    );
    let mut trained = Trained::default();
    module.visit(&mut trained);
    if trained.params.is_empty() && !x.is_tracked() {
        return forward(module, x);
    }
    let detached = module.clone().map(&mut Detach);
    let (y, seeds) = seed::recording(|| forward(&detached, untracked(x.clone())));
    let offloaded = match mode {
        GradientCheckpointing::Offload => offload(&x),
        _ => None,
    };
    let keep_input = offloaded.is_none();
    let block = Arc::new(Block {
        module: module.clone(),
        forward,
        seeds,
        offloaded,
    });
    qlora_fused::recompute_in_backward(x, trained.params, y, block, keep_input)
}

/// `x`'s values in host memory and the device they come back to, unless `x` is there already.
fn offload<const D: usize>(x: &Tensor<D>) -> Option<(Tensor<D>, Device)> {
    let inner = untracked(x.clone()).inner();
    if inner.clone().try_into_primitive::<Flex>().is_ok() {
        return None;
    }
    let device = inner.device();
    Some((inner.to_device(&Device::flex()), device))
}

/// `x` outside the graph, a new untracked node (Burn's `detach` keeps a leaf's
/// `require_grad`; this does not).
fn untracked<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.set_require_grad(false)
}

/// The trained parameters of a module, in visiting order.
#[derive(Default)]
struct Trained {
    params: Vec<DispatchTensor>,
}

impl ModuleVisitor for Trained {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        assert!(
            t.is_require_grad() || !t.is_tracked(),
            "checkpoint: a parameter of the block is tracked but not a leaf (computed from \
             other tensors); a checkpointed block's parameters must be leaves"
        );
        if t.is_require_grad() {
            self.params.push(t.into_dispatch());
        }
    }
}

/// The module with its tracked parameters untracked (same storage).
struct Detach;

impl ModuleMapper for Detach {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.val().is_tracked() {
            param.map(untracked)
        } else {
            param
        }
    }
}

/// A gradient reader for one fresh leaf, whatever its rank.
type Leaf = Box<dyn Fn(&burn::tensor::Gradients) -> Option<DispatchTensor> + Send>;

/// The module with its trained parameters replaced by fresh leaves (same storage, a new
/// graph), in visiting order.
struct Refresh<'a> {
    leaves: &'a mut Vec<Leaf>,
}

impl ModuleMapper for Refresh<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.val().is_require_grad() {
            return param;
        }
        let mut fresh = None;
        let param = param.map(|t| {
            // A new node (Burn's `detach` makes one and keeps `require_grad`): a fresh leaf.
            let leaf = untracked(t).require_grad();
            fresh = Some(leaf.clone());
            leaf
        });
        let leaf = fresh.expect("mapped");
        self.leaves.push(Box::new(move |grads| {
            leaf.grad(grads).map(Tensor::into_dispatch)
        }));
        param
    }
}

/// What the graph node keeps to recompute the block: the module, its forward pass and the
/// dropout seeds of the first pass.
struct Block<M, F, const D: usize> {
    module: M,
    forward: F,
    seeds: Vec<u64>,
    /// The input in host memory and its device, with [`GradientCheckpointing::Offload`].
    offloaded: Option<(Tensor<D>, Device)>,
}

impl<M, F, const D: usize> RecomputeBlock<D> for Block<M, F, D>
where
    M: Module + Sync + 'static,
    F: Fn(&M, Tensor<D>) -> Tensor<D> + Send + Sync + 'static,
{
    fn recompute(
        &self,
        input: Option<Tensor<D>>,
        input_requires_grad: bool,
        output_grad: Tensor<D>,
    ) -> Recomputed<D> {
        let input = match (input, &self.offloaded) {
            (Some(x), _) => x,
            (None, Some((host, device))) => host.clone().to_device(device),
            (None, None) => unreachable!("the node keeps the input unless it was offloaded"),
        };
        let zeros = input_requires_grad.then(|| input.zeros_like());
        let mut leaves = Vec::new();
        let module = self.module.clone().map(&mut Refresh {
            leaves: &mut leaves,
        });
        let x = input.autodiff();
        let x = if input_requires_grad {
            x.require_grad()
        } else {
            x
        };
        let y = seed::replaying(&self.seeds, || (self.forward)(&module, x.clone()));
        // The vector-Jacobian product: d(sum(y ∘ g))/dθ = gᵀ·∂y/∂θ.
        let grads = (y * output_grad.autodiff()).sum().backward();
        Recomputed {
            // An output that does not depend on its input gives the input zeros.
            input: zeros.map(|z| x.grad(&grads).unwrap_or(z)),
            params: leaves.iter().map(|leaf| leaf(&grads)).collect(),
        }
    }
}
