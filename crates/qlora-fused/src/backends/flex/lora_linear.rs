//! `LoraLinearOps` for Flex: the host kernels of `host::lora_linear` on the NF4 weight's host
//! view, computed in f32, results in the input's float type.

use burn::backend::{DType, Flex, tensor::FloatTensor};
use qlora_backend::{Nf4Primitive, with_host_nf4};

use super::{f32s, slice, tensor};
use crate::host::lora_linear::{HostLora, backward, forward};
use crate::ops::{LoraLinearOps, dims2};

/// The adapter's host values (`A` `[r, in]`, `B` `[out, r]`) and settings.
fn adapter<'a>(
    a: &'a burn::backend::flex::FlexTensor,
    b: &'a burn::backend::flex::FlexTensor,
    (scaling, dropout, seed): (f32, f32, u64),
) -> HostLora<'a> {
    let [r, _] = dims2(a, "lora_a");
    HostLora {
        a: slice(a),
        b: slice(b),
        r,
        scaling,
        dropout,
        seed,
    }
}

impl LoraLinearOps for Flex {
    fn nf4_lora_linear(
        x: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
        lora_a: FloatTensor<Self>,
        lora_b: FloatTensor<Self>,
        scaling: f32,
        dropout: f32,
        seed: u64,
        base: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let ([m, _], dtype) = (dims2(&x, "x"), x.dtype());
        let n = w.layout.rows;
        let (x, a, b) = (f32s(x), f32s(lora_a), f32s(lora_b));
        let lora = adapter(&a, &b, (scaling, dropout, seed));
        let (y, h) = with_host_nf4(&w, |w| forward(w, slice(&x), m, &lora, base));
        (
            tensor(y, vec![m, n], dtype),
            tensor(h, vec![m, lora.r], DType::F32),
        )
    }

    fn nf4_lora_linear_backward(
        dy: FloatTensor<Self>,
        w: Nf4Primitive<Self>,
        x: FloatTensor<Self>,
        h: FloatTensor<Self>,
        lora_a: FloatTensor<Self>,
        lora_b: FloatTensor<Self>,
        scaling: f32,
        dropout: f32,
        seed: u64,
        input_grad: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let ([m, k], x_dtype) = (dims2(&x, "x"), x.dtype());
        let (a_dtype, b_dtype) = (lora_a.dtype(), lora_b.dtype());
        let n = w.layout.rows;
        let (dy, x, h, a, b) = (f32s(dy), f32s(x), f32s(h), f32s(lora_a), f32s(lora_b));
        let lora = adapter(&a, &b, (scaling, dropout, seed));
        let (dx, da, db) = with_host_nf4(&w, |w| {
            backward(w, slice(&dy), slice(&x), slice(&h), m, &lora, input_grad)
        });
        let dx_rows = if input_grad { m } else { 0 };
        (
            tensor(dx, vec![dx_rows, k], x_dtype),
            tensor(da, vec![lora.r, k], a_dtype),
            tensor(db, vec![n, lora.r], b_dtype),
        )
    }
}
