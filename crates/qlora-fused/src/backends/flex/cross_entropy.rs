//! `LinearCrossEntropyOps` for Flex: the host kernels of `host::cross_entropy`. Losses are f32
//! whatever the inputs' float type (as HF upcasts logits for the loss); gradients are in the
//! type of what they are the gradient of.

use burn::backend::{
    DType, Flex,
    tensor::{FloatTensor, IntTensor},
};

use super::{f32s, i64s, slice, tensor};
use std::sync::{Arc, Mutex};

use burn::backend::flex::FlexTensor;
use qlora_cpu_gemm::{Tier, matmul_tier};

use crate::host::cross_entropy::{
    Bf16Head, CeInputs, bf16_head, linear_cross_entropy_packed, linear_cross_entropy_weight_grad,
    linear_cross_entropy_with_grad_packed, uses_bf16_head,
};
use crate::ops::{LinearCrossEntropyOps, dims2};

/// Runs `kernel` on the f32/i64 host values of the operands, `[n, h]`, `[v, h]`, `[n]`, `[n]`.
///
/// # Panics
/// If the feature counts of `x` and `w` differ.
fn with_inputs<T>(
    x: FloatTensor<Flex>,
    w: FloatTensor<Flex>,
    targets: IntTensor<Flex>,
    weights: FloatTensor<Flex>,
    kernel: impl FnOnce(&CeInputs<'_>, &FlexTensor) -> T,
) -> T {
    let ([_, h], [v, hw]) = (dims2(&x, "x"), dims2(&w, "w"));
    assert_eq!(
        h, hw,
        "linear_cross_entropy: x has {h} features, w has {hw}"
    );
    let (x, w, t, a) = (f32s(x), f32s(w), i64s(targets), f32s(weights));
    kernel(
        &CeInputs {
            x: slice(&x),
            w: slice(&w),
            targets: t.as_slice::<i64>().expect("a contiguous i64 tensor"),
            weights: slice(&a),
            h,
            v,
        },
        &w,
    )
}

/// The last head weight packed for the bf16 products, with a clone of its tensor: a frozen
/// head (QLoRA's, tied to the frozen embeddings or not) is packed once, not once per step
/// (twice 28 M elements per step on the default model). Holding the clone keeps the weight's
/// buffer alive and shared, so no other tensor can own those bytes, and Flex's in-place ops
/// copy a shared buffer before writing: the same address means the same values. The price is
/// the packed copy (half the f32 head, twice) kept between steps.
struct CachedHead {
    key: (usize, usize, usize, Tier),
    _weight: FlexTensor,
    head: Arc<Bf16Head>,
}

static HEAD: Mutex<Option<CachedHead>> = Mutex::new(None);

/// The packed head for these inputs (with the gradient's layout when `with_grad`), from the
/// cache when `w` is the weight it holds; `None` when the products run in f32.
fn packed_head(inp: &CeInputs<'_>, w: &FlexTensor, with_grad: bool) -> Option<Arc<Bf16Head>> {
    if !uses_bf16_head(inp) {
        return None;
    }
    let key = (inp.w.as_ptr() as usize, inp.w.len(), inp.h, matmul_tier());
    let mut cache = HEAD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.as_ref().filter(|c| c.key == key)
        && (c.head.has_grad() || !with_grad)
    {
        return Some(c.head.clone());
    }
    let head = Arc::new(bf16_head(inp, with_grad)?);
    *cache = Some(CachedHead {
        key,
        _weight: w.clone(),
        head: head.clone(),
    });
    Some(head)
}

impl LinearCrossEntropyOps for Flex {
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [n, _] = dims2(&x, "x");
        let loss = with_inputs(x, w, targets, weights, |inp, w| {
            linear_cross_entropy_packed(inp, packed_head(inp, w, false).as_deref())
        });
        tensor(loss, vec![n], DType::F32)
    }

    fn linear_cross_entropy_with_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let ([n, h], dtype) = (dims2(&x, "x"), x.dtype());
        let (loss, dx) = with_inputs(x, w, targets, weights, |inp, w| {
            linear_cross_entropy_with_grad_packed(inp, packed_head(inp, w, true).as_deref())
        });
        (
            tensor(loss, vec![n], DType::F32),
            tensor(dx, vec![n, h], dtype),
        )
    }

    fn linear_cross_entropy_weight_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let ([v, h], dtype) = (dims2(&w, "w"), w.dtype());
        let dw = with_inputs(x, w, targets, weights, |inp, _| {
            linear_cross_entropy_weight_grad(inp)
        });
        tensor(dw, vec![v, h], dtype)
    }
}
