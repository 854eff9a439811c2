//! [`CausalAttentionOps`] on `CubeBackend` (and, through the ops' Fusion metadata, on
//! `Fusion<CubeBackend>`): the tiled kernels of `attention_kernels`, so that neither pass holds
//! the `[b, h, tq, tk]` scores. The backward pass runs the forward kernel again for each row's
//! output and log-sum-exp (the op keeps only `Q`, `K`, `V`), then the query-side and the
//! key-side kernels.

use burn::backend::{
    DType, FloatDType, IntDType, Shape,
    cubecl::dtype_to_storage_type,
    ops::{FloatTensorOps, IntTensorOps},
    tensor::{FloatTensor, IntTensor},
};
use burn_cubecl::{
    CubeBackend,
    cubecl::{prelude::*, server::Handle},
    kernel::into_contiguous,
    tensor::CubeTensor,
};

use super::attention_kernels::{
    ROWS, attention_backward_key_kernel, attention_backward_query_kernel, attention_forward_kernel,
    tile_rows,
};
use super::tensors::{buffer, cast_to, contiguous_as, empty_like};
use crate::host::attention::AttnShape;
use crate::ops::{CausalAttentionOps, attention_dims};

/// What every kernel of one call reads: the inputs made contiguous and of `q`'s float type,
/// the segment starts as i32 (one unused 0 without segments) and the shapes (a window that
/// reaches past the keys dropped: it hides nothing).
struct Bindings {
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    starts: Handle,
    segmented: bool,
    s: AttnShape,
    /// The float types of `k` and `v` as the caller gave them (their gradients' types).
    kv_dtypes: (DType, DType),
}

impl Bindings {
    fn new(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        starts: Option<IntTensor<CubeBackend>>,
        scale: f32,
        window: Option<usize>,
    ) -> Self {
        let mut s = attention_dims(&q, &k, &v, scale, window);
        s.window = s.window.filter(|&w| w < s.tk);
        assert!(
            s.d > 0,
            "causal_attention on CubeCL: query/key heads of width 0"
        );
        assert!(
            s.d + s.dv <= 4093,
            "causal_attention on CubeCL: heads of width {} and {} are wider than its kernels' \
             shared tiles take (at most 4093 together)",
            s.d,
            s.dv
        );
        let kv_dtypes = (k.dtype, v.dtype);
        let q = into_contiguous(q);
        let (k, v) = (contiguous_as(k, q.dtype), contiguous_as(v, q.dtype));
        let segmented = starts.is_some();
        let starts = match starts {
            Some(t) => into_contiguous(CubeBackend::int_cast(t, IntDType::I32))
                .handle
                .clone(),
            None => q.client.create_from_slice(i32::as_bytes(&[0])),
        };
        Self {
            q,
            k,
            v,
            starts,
            segmented,
            s,
            kv_dtypes,
        }
    }

    fn client(&self) -> &Client {
        &self.q.client
    }

    /// A new contiguous tensor of the inputs' dtype.
    fn empty(&self, shape: [usize; 4]) -> CubeTensor {
        empty_like(&self.q, Shape::new(shape))
    }

    fn zeros(&self, shape: [usize; 4]) -> CubeTensor {
        CubeBackend::float_zeros(
            Shape::new(shape),
            &self.q.device,
            FloatDType::from(self.q.dtype),
        )
    }

    fn dtype(&self) -> ElemType {
        dtype_to_storage_type(self.q.dtype)
    }

    /// Nothing to compute: an empty batch, head count, sequence or value width.
    fn empty_problem(&self) -> bool {
        let s = &self.s;
        s.b * s.h * s.tq * s.tk * s.d * s.dv == 0
    }

    /// `t`'s buffer (contiguous: made so by [`Bindings::new`] or created here).
    fn buffer(&self, t: &CubeTensor) -> BufferArg {
        // SAFETY: every tensor a kernel here reads or writes is contiguous.
        unsafe { buffer(t) }
    }

    fn starts_arg(&self) -> BufferArg {
        let s = &self.s;
        let len = if self.segmented { s.b * s.tq } else { 1 };
        // SAFETY: the i32 starts `[b, tq]`, or the one-element placeholder.
        unsafe { BufferArg::from_raw_parts(self.starts.clone(), len) }
    }

    /// The output `[b, h, tq, dv]` and, where `with_lse`, each row's log-sum-exp (f32).
    fn forward(&self, with_lse: bool) -> (CubeTensor, Handle) {
        let s = self.s;
        let out = self.empty([s.b, s.h, s.tq, s.dv]);
        let rows = s.b * s.h * s.tq;
        let lse = self.client().empty(if with_lse { rows * 4 } else { 4 });
        // SAFETY: every buffer holds the elements declared (the tensors their shapes' count).
        unsafe {
            attention_forward_kernel::launch(
                self.client(),
                CubeCount::Static(s.tq.div_ceil(ROWS) as u32, s.h as u32, s.b as u32),
                CubeDim::new_1d(ROWS as u32),
                self.buffer(&self.q),
                self.buffer(&self.k),
                self.buffer(&self.v),
                self.starts_arg(),
                self.buffer(&out),
                BufferArg::from_raw_parts(lse.clone(), if with_lse { rows } else { 1 }),
                s.h,
                s.kvh,
                s.tq,
                s.tk,
                s.window.unwrap_or(0),
                s.scale,
                s.d,
                s.dv,
                tile_rows(s.d, s.dv),
                self.segmented,
                with_lse,
                self.dtype(),
            );
        }
        (out, lse)
    }

    /// `(dq, dk, dv)` for the upstream gradient `dout` `[b, h, tq, dv]`.
    fn backward(&self, dout: CubeTensor) -> (CubeTensor, CubeTensor, CubeTensor) {
        let s = self.s;
        let (q_shape, k_shape, v_shape) = (
            [s.b, s.h, s.tq, s.d],
            [s.b, s.kvh, s.tk, s.d],
            [s.b, s.kvh, s.tk, s.dv],
        );
        if self.empty_problem() {
            return (
                self.zeros(q_shape),
                cast_to(self.zeros(k_shape), self.kv_dtypes.0),
                cast_to(self.zeros(v_shape), self.kv_dtypes.1),
            );
        }
        let (out, lse) = self.forward(true);
        let dout = contiguous_as(dout, self.q.dtype);
        let rows = s.b * s.h * s.tq;
        let dq = self.empty(q_shape);
        let dsum = self.client().empty(rows * 4);
        let tile = tile_rows(s.d, s.dv);
        let window = s.window.unwrap_or(0);
        // SAFETY: as in `forward`.
        unsafe {
            attention_backward_query_kernel::launch(
                self.client(),
                CubeCount::Static(s.tq.div_ceil(ROWS) as u32, s.h as u32, s.b as u32),
                CubeDim::new_1d(ROWS as u32),
                self.buffer(&self.q),
                self.buffer(&self.k),
                self.buffer(&self.v),
                self.starts_arg(),
                self.buffer(&out),
                self.buffer(&dout),
                BufferArg::from_raw_parts(lse.clone(), rows),
                self.buffer(&dq),
                BufferArg::from_raw_parts(dsum.clone(), rows),
                s.h,
                s.kvh,
                s.tq,
                s.tk,
                window,
                s.scale,
                s.d,
                s.dv,
                tile,
                self.segmented,
                self.dtype(),
            );
        }
        let dk = self.empty(k_shape);
        let dv = self.empty(v_shape);
        // SAFETY: as in `forward`.
        unsafe {
            attention_backward_key_kernel::launch(
                self.client(),
                CubeCount::Static(s.tk.div_ceil(ROWS) as u32, s.kvh as u32, s.b as u32),
                CubeDim::new_1d(ROWS as u32),
                self.buffer(&self.q),
                self.buffer(&self.k),
                self.buffer(&self.v),
                self.starts_arg(),
                self.buffer(&dout),
                BufferArg::from_raw_parts(lse, rows),
                BufferArg::from_raw_parts(dsum, rows),
                self.buffer(&dk),
                self.buffer(&dv),
                s.h,
                s.kvh,
                s.tq,
                s.tk,
                window,
                s.scale,
                s.d,
                s.dv,
                tile,
                self.segmented,
                self.dtype(),
            );
        }
        (
            dq,
            cast_to(dk, self.kv_dtypes.0),
            cast_to(dv, self.kv_dtypes.1),
        )
    }

    fn output(&self) -> CubeTensor {
        let s = self.s;
        if self.empty_problem() {
            return self.zeros([s.b, s.h, s.tq, s.dv]);
        }
        self.forward(false).0
    }
}

/// The tiled kernels: no `[b, h, tq, tk]` scores in either pass.
impl CausalAttentionOps for CubeBackend {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        Bindings::new(q, k, v, None, scale, window).output()
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        Bindings::new(q, k, v, None, scale, window).backward(dout)
    }

    fn causal_attention_segmented(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> FloatTensor<Self> {
        Bindings::new(q, k, v, Some(starts), scale, window).output()
    }

    fn causal_attention_segmented_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        starts: IntTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: Option<usize>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        Bindings::new(q, k, v, Some(starts), scale, window).backward(dout)
    }
}
