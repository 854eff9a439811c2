//! Causal self-attention as an extension op with its own backward pass.
//!
//! `out = softmax(scale · Q·Kᵀ + causal mask) · V` for queries `[b, h, tq, d]` and keys/values
//! of `kvh` heads (grouped-query attention: query head `i` reads kv head `i / (h / kvh)`, no
//! copy of the keys per group). The mask is aligned bottom-right: query `i` of `tq` sees keys
//! `0 ..= i + tk − tq`, so the same op serves a training sequence (`tq = tk`) and decoding
//! with a cache (`tq < tk`). A sliding window `W` (Mistral's `sliding_window`) narrows it to
//! the last `W` keys: query `i` at key position `p = i + tk − tq` sees `p − W < j ≤ p`.
//!
//! Burn 0.22.1's Autodiff differentiates `attention` through its composed fallback, keeping the
//! `[b, h, tq, tk]` scores and probabilities of every layer for the backward pass. Here the
//! backward pass keeps only `Q`, `K`, `V` and recomputes the probabilities block by block
//! (Dao et al. 2022, *FlashAttention*). Flex runs a fused host kernel for both passes, and the
//! CubeCL runtimes tiled kernels of the same scheme (`backends/cube/attention_kernels.rs`);
//! the default bodies, composed of a backend's own ops, hold the scores and define the op.

use burn::backend::{
    Backend, Dispatch, Shape, TensorMetadata, backend_extension, get_or_init_device_settings,
    ops::AttentionModuleOptions,
    tensor::{BoolTensor, FloatTensor, IntTensor},
};
use burn::tensor::{Int, Tensor};

use crate::host::attention::AttnShape;

/// The causal attention ops (see the module docs).
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "cube"), Fusion: cfg(feature = "cube"))]
pub trait CausalAttentionOps: Backend {
    /// `[b, h, tq, dv]`: attention of queries `q` `[b, h, tq, d]` over keys `k` `[b, kvh, tk, d]`
    /// and values `v` `[b, kvh, tk, dv]`, scores scaled by `scale`, each query seeing the last
    /// `window` keys up to its position where a window is given.
    #[fusion(dtype = q, shape = out_shape(q, v))]
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        let s = dims(&q, &k, &v, scale, window);
        let group = s.h / s.kvh;
        if window.is_some() {
            // Burn's `attention` has no window: the definition, with the explicit mask.
            let (k, v) = (repeat_kv::<Self>(k, group), repeat_kv::<Self>(v, group));
            let p = probabilities::<Self>(&s, q, k, None);
            return Self::float_matmul(p, v);
        }
        let options = AttentionModuleOptions {
            scale: Some(scale as f64),
            softcap: None,
            is_causal: s.tq > 1,
        };
        Self::attention(
            q,
            repeat_kv::<Self>(k, group),
            repeat_kv::<Self>(v, group),
            None,
            None,
            options,
        )
    }

    /// The gradients `(dq, dk, dv)` of `Σ dout ∘ causal_attention(q, k, v, scale, window)`, in
    /// the shapes of `q`, `k` and `v`.
    #[fusion(meta = |q, k, v, _dout, _scale, _window| (q.clone(), k.clone(), v.clone()))]
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(q, k, v, dout, scale, window, None)
    }

    /// [`CausalAttentionOps::causal_attention`] over a padding-free batch: query `i` of batch
    /// row `b` sees no key before `starts[b, i]` (`[b, tq]` ints, the first position of its
    /// sample in the row), so the samples concatenated in a row do not see each other.
    #[fusion(dtype = q, shape = out_shape(q, v))]
    fn causal_attention_segmented(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        let s = dims(&q, &k, &v, scale, window);
        let group = s.h / s.kvh;
        let (k, v) = (repeat_kv::<Self>(k, group), repeat_kv::<Self>(v, group));
        let p = probabilities::<Self>(&s, q, k, Some(starts));
        Self::float_matmul(p, v)
    }

    /// The gradients `(dq, dk, dv)` of [`CausalAttentionOps::causal_attention_segmented`].
    #[fusion(meta = |q, k, v, _starts, _dout, _scale, _window| (q.clone(), k.clone(), v.clone()))]
    fn causal_attention_segmented_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(q, k, v, dout, scale, window, Some(starts))
    }
}

/// The output's shape `[b, h, tq, dv]` for queries `q` and values `v` (Fusion's metadata).
#[cfg_attr(not(feature = "cube"), allow(dead_code))]
fn out_shape(q: &Shape, v: &Shape) -> Shape {
    Shape::new([q[0], q[1], q[2], v[3]])
}

fn dims4(t: &impl TensorMetadata, what: &str) -> [usize; 4] {
    let s = t.shape();
    let d = s.as_slice();
    assert_eq!(
        d.len(),
        4,
        "causal_attention: `{what}` must be [batch, heads, len, width], found {d:?}"
    );
    [d[0], d[1], d[2], d[3]]
}

/// # Panics
/// If the shapes of `q`, `k`, `v` do not fit together (see [`causal_attention`]).
pub(crate) fn dims(
    q: &impl TensorMetadata,
    k: &impl TensorMetadata,
    v: &impl TensorMetadata,
    scale: f32,
    window: Option<usize>,
) -> AttnShape {
    fit(dims4(q, "q"), dims4(k, "k"), dims4(v, "v"), scale, window)
}

/// # Panics
/// As [`dims`].
fn fit(
    [b, h, tq, d]: [usize; 4],
    [bk, kvh, tk, dk]: [usize; 4],
    [bv, kvh_v, tk_v, dv]: [usize; 4],
    scale: f32,
    window: Option<usize>,
) -> AttnShape {
    assert!(
        bk == b && bv == b && kvh_v == kvh && tk_v == tk && dk == d,
        "causal_attention: q {:?}, k {:?}, v {:?} do not fit together",
        [b, h, tq, d],
        [bk, kvh, tk, dk],
        [bv, kvh_v, tk_v, dv]
    );
    assert!(
        kvh > 0 && h % kvh == 0,
        "causal_attention: {h} query heads are not a multiple of {kvh} key/value heads"
    );
    assert!(
        window != Some(0),
        "causal_attention: a sliding window of 0 keys sees nothing"
    );
    AttnShape {
        b,
        h,
        kvh,
        tq,
        tk,
        d,
        dv,
        scale,
        window,
    }
}

/// `[b, kvh, s, d]` → `[b, kvh · groups, s, d]`, each kv head repeated for its group.
fn repeat_kv<B: Backend>(x: FloatTensor<B>, groups: usize) -> FloatTensor<B> {
    if groups == 1 {
        return x;
    }
    let [b, kvh, s, d] = dims4(&x, "k");
    let x = B::float_reshape(x, Shape::new([b, kvh, 1, s, d]));
    let x = B::float_expand(x, Shape::new([b, kvh, groups, s, d]));
    B::float_reshape(x, Shape::new([b, kvh * groups, s, d]))
}

/// The adjoint of [`repeat_kv`]: the gradients of a group's query heads summed.
fn sum_groups<B: Backend>(x: FloatTensor<B>, groups: usize) -> FloatTensor<B> {
    if groups == 1 {
        return x;
    }
    let [b, h, s, d] = dims4(&x, "grad");
    let x = B::float_reshape(x, Shape::new([b, h / groups, groups, s, d]));
    B::float_reshape(B::float_sum_dim(x, 2), Shape::new([b, h / groups, s, d]))
}

/// `true` where query `i` must not see key `j` (`j > p` or, with a window, `j ≤ p − W`, for
/// `p = i + tk − tq`; with segment `starts` `[b, tq]`, `j < starts[b, i]`), `[b, h, tq, tk]`.
fn hidden_mask<B: Backend>(
    scores: &FloatTensor<B>,
    window: Option<usize>,
    starts: Option<IntTensor<B>>,
) -> BoolTensor<B> {
    let device = scores.device();
    let [b, h, tq, tk] = dims4(scores, "scores");
    let settings = get_or_init_device_settings::<B>(&device);
    let rows = B::int_reshape(
        B::int_arange(0..tq as i64, &device, settings.int_dtype),
        Shape::new([tq, 1]),
    );
    let cols = B::int_reshape(
        B::int_arange(0..tk as i64, &device, settings.int_dtype),
        Shape::new([1, tk]),
    );
    let rows = B::int_add_scalar(rows, (tk as i64 - tq as i64).into());
    let rows_2d = Shape::new([tq, tk]);
    let (rows, cols) = (
        B::int_expand(rows, rows_2d.clone()),
        B::int_expand(cols, rows_2d),
    );
    let mut mask = B::int_lower(rows.clone(), cols.clone(), settings.bool_dtype);
    if let Some(w) = window {
        // j < p − W + 1
        let start = B::int_add_scalar(rows, (1 - w as i64).into());
        let before = B::int_lower(cols.clone(), start, settings.bool_dtype);
        mask = B::bool_or(mask, before);
    }
    let mask = B::bool_reshape(mask, Shape::new([1, 1, tq, tk]));
    let mask = B::bool_expand(mask, Shape::new([b, h, tq, tk]));
    let Some(starts) = starts else {
        return mask;
    };
    // j < starts[b, i]
    let full = Shape::new([b, h, tq, tk]);
    let starts = B::int_expand(
        B::int_reshape(starts, Shape::new([b, 1, tq, 1])),
        full.clone(),
    );
    let cols = B::int_expand(B::int_reshape(cols, Shape::new([1, 1, tq, tk])), full);
    B::bool_or(mask, B::int_lower(cols, starts, settings.bool_dtype))
}

/// `P = softmax(scale · Q·Kᵀ)` over the keys each query sees, `[b, h, tq, tk]` (`k` with its
/// heads already repeated; rows that see no key are 0).
fn probabilities<B: Backend>(
    s: &AttnShape,
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    starts: Option<IntTensor<B>>,
) -> FloatTensor<B> {
    let scores = B::float_mul_scalar(B::float_matmul(q, B::float_transpose(k)), s.scale.into());
    let mask = hidden_mask::<B>(&scores, s.window, starts);
    let scores = B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into());
    let wide = |t: FloatTensor<B>| B::float_expand(t, Shape::new([s.b, s.h, s.tq, s.tk]));
    let max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), f32::MIN.into());
    let e = B::float_exp(B::float_sub(scores, wide(max)));
    let sum = B::float_clamp_min(B::float_sum_dim(e.clone(), 3), f32::MIN_POSITIVE.into());
    B::float_div(e, wide(sum))
}

/// The backward pass of the definition, with the backend's own ops (all scores held).
fn composed_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    dout: FloatTensor<B>,
    scale: f32,
    window: Option<usize>,
    starts: Option<IntTensor<B>>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let s = dims(&q, &k, &v, scale, window);
    let group = s.h / s.kvh;
    let (k, v) = (repeat_kv::<B>(k, group), repeat_kv::<B>(v, group));
    let p = probabilities::<B>(&s, q.clone(), k.clone(), starts);
    let wide = |t: FloatTensor<B>| B::float_expand(t, Shape::new([s.b, s.h, s.tq, s.tk]));
    let dv = B::float_matmul(B::float_transpose(p.clone()), dout.clone());
    let dp = B::float_matmul(dout, B::float_transpose(v));
    let dot = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), 3);
    let ds = B::float_mul_scalar(B::float_mul(p, B::float_sub(dp, wide(dot))), scale.into());
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_transpose(ds), q);
    (dq, sum_groups::<B>(dk, group), sum_groups::<B>(dv, group))
}

/// Causal self-attention `softmax(scale · Q·Kᵀ + mask) · V` (see the module docs).
///
/// - `q`: `[batch, heads, tq, d]`
/// - `k`: `[batch, kv_heads, tk, d]` with `tk ≥ tq` and `heads` a multiple of `kv_heads`
/// - `v`: `[batch, kv_heads, tk, dv]`
/// - `scale`: usually `1 / √d`
/// - returns `[batch, heads, tq, dv]`
///
/// Differentiable in `q`, `k` and `v` on an autodiff device, keeping no scores.
///
/// # Panics
/// If the shapes do not fit together.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Tensor<4> {
    attention_with(q, k, v, scale, None)
}

/// [`causal_attention`] in a sliding window: query `i` at key position `p = i + tk − tq` sees
/// only keys `p − window < j ≤ p` (transformers' `sliding_window`, as Mistral uses it; a window
/// at least as long as the keys is plain causal attention).
///
/// Differentiable as [`causal_attention`], keeping no scores.
///
/// # Panics
/// If the shapes do not fit together or `window` is 0.
pub fn causal_attention_windowed(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    window: usize,
) -> Tensor<4> {
    attention_with(q, k, v, scale, Some(window))
}

fn attention_with(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    window: Option<usize>,
) -> Tensor<4> {
    fit(q.dims(), k.dims(), v.dims(), scale, window);
    Tensor::from_dispatch(<Dispatch as CausalAttentionOps>::causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
        window,
    ))
}

/// [`causal_attention`] (or [`causal_attention_windowed`] with a `window`) over a padding-free
/// batch, the samples of each row kept apart: query `i` of row `b` sees keys
/// `starts[b, i] ..= i` only (TRL's `padding_free`, FlashAttention's `cu_seqlens`).
///
/// - `q`, `k`, `v`: as [`causal_attention`], with `tq = tk` (training; no cache)
/// - `starts`: `[batch, len]`, the position in the row of the first token of each token's
///   sample (`0, 0, 0, 3, 3, 5, ..` for samples of lengths 3, 2, ..)
/// - returns `[batch, heads, len, dv]`
///
/// Differentiable in `q`, `k` and `v` on an autodiff device, keeping no scores.
///
/// # Panics
/// If the shapes do not fit together, `starts` is not `[batch, len]`, or `tq ≠ tk`.
pub fn causal_attention_segmented(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    starts: Tensor<2, Int>,
    scale: f32,
    window: Option<usize>,
) -> Tensor<4> {
    let s = fit(q.dims(), k.dims(), v.dims(), scale, window);
    assert_eq!(
        s.tq, s.tk,
        "causal_attention_segmented: queries and keys must be one row"
    );
    assert_eq!(
        starts.dims(),
        [s.b, s.tq],
        "causal_attention_segmented: starts must be [batch, len]"
    );
    Tensor::from_dispatch(
        <Dispatch as CausalAttentionOps>::causal_attention_segmented(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            starts.into_dispatch(),
            scale,
            window,
        ),
    )
}
