//! The fused QLoRA linear of [`crate::ops::LoraLinearOps`] on host memory: the base product
//! from `qlora-backend`'s NF4 kernels, the adapter's thin products written straight into (or
//! accumulated onto) their destinations, and the dropped-out input
//! in a per-thread scratch buffer that is reused from call to call (a fresh buffer per call
//! would page-fault on first touch, which costs more than the rank-`r` products themselves).
//!
//! On a bf16 tier (`qlora_cpu_gemm::set_matmul_tier`) the two adapter products whose depth is
//! the layer's width, `x · Aᵀ` and `dy · B`, run on the bf16 kernel over the very chunks of
//! `x` and `dy` that the base's products pack (`CpuNf4::linear_sharing_input`), so they cost
//! neither a packing pass nor the `gemm` crate's thin-output kernel (a 16-wide output is its
//! slowest shape); `A` and `B` are rounded to bf16 as PEFT's autocast does, the scaling applied
//! in f32 after (on the f32 tier, or with dropout, the `gemm` crate computes them). The other
//! products (`h · Bᵀ`, `dhᵀ · x`, `dyᵀ · h`, `dh · A`) stay f32 on every tier, on the rank-`r`
//! loops of [`super::rank_r`] rather than a general GEMM.

use std::cell::RefCell;

use qlora_backend::CpuNf4;
use qlora_cpu_gemm::{PackedA, PackedB, Tier, gemm_bf16};

use super::dropout::{seeded_dropout_add, seeded_dropout_into};
use super::rank_r::{add_rank_r, outer_sum};

/// One adapter on host memory: `A` `[r, in]`, `B` `[out, r]`, row-major.
pub(crate) struct HostLora<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub r: usize,
    pub scaling: f32,
    pub dropout: f32,
    pub seed: u64,
}

thread_local! {
    /// The dropped-out input (forward) or the adapter's input gradient before its mask
    /// (backward), kept per thread between calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements (contents unspecified).
fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// A row-major or transposed view of a matrix for [`gemm`]: `(pointer, column stride, row
/// stride)`.
type View = (*const f32, isize, isize);

/// `dst[m, n] = (dst if accumulate) + beta · lhs[m, k] · rhs[k, n]`, `dst` row-major.
///
/// # Safety
/// Every pointer is valid for the extents its strides and sizes imply, and `dst` does not alias
/// the operands.
unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: View,
    rhs: View,
    beta: f32,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: forwarded from the caller; dst is [m, n] row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            1.0f32,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// `(y, h)`: `h = s · dropout(x) · Aᵀ` `[m, r]` and `y = x · Wᵀ (if base) + h · Bᵀ` `[m, out]`.
pub(crate) fn forward(
    w: &CpuNf4<'_>,
    x: &[f32],
    m: usize,
    lora: &HostLora<'_>,
    base: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (n, k, r) = (w.out_features(), w.in_features(), lora.r);
    assert_eq!(x.len(), m * k, "nf4_lora_linear: input length");
    let mut h = vec![0f32; m * r];
    // Without dropout the adapter reads the base's own input: on a bf16 tier its `x · Aᵀ`
    // multiplies the chunks of `x` the base product packed, on the same kernel.
    let share = base && lora.dropout == 0.0 && r > 0;
    let mut shared = false;
    let mut y = if base {
        w.linear_sharing_input(x, m, |tier, c0, xa| {
            if share {
                // h (+)= x[:, c0..] · A[:, c0..]ᵀ; Aᵀ's columns are A's rows.
                let at = PackedB::from_columns(xa.depth(), r, |j0, cols| {
                    for (c, col) in cols.chunks_exact_mut(xa.depth()).enumerate() {
                        col.copy_from_slice(&lora.a[(j0 + c) * k + c0..][..xa.depth()]);
                    }
                });
                gemm_bf16(tier, xa, &at, &mut h, r, shared);
                shared = true;
            }
        })
    } else {
        vec![0f32; m * n]
    };
    if m == 0 || r == 0 {
        return (y, h);
    }
    let xa = |xd: &[f32], h: &mut [f32]| {
        // SAFETY: xd is [m, k] row-major; Aᵀ(kk, j) = A[j·k + kk].
        unsafe {
            gemm(
                (m, r, k),
                h,
                false,
                (xd.as_ptr(), 1, k as isize),
                (lora.a.as_ptr(), k as isize, 1),
                lora.scaling,
            )
        }
    };
    if shared {
        h.iter_mut().for_each(|v| *v *= lora.scaling);
    } else if lora.dropout > 0.0 {
        with_scratch(m * k, |xd| {
            seeded_dropout_into(x, lora.dropout, lora.seed, xd);
            xa(xd, &mut h);
        });
    } else {
        xa(x, &mut h);
    }
    // y += h · Bᵀ
    add_rank_r(&mut y, n, &h, r, &transpose(lora.b, n, r), true);
    (y, h)
}

/// `(dx, dA, dB)` under `dy` `[m, out]` (see [`crate::ops::LoraLinearOps`]); `dx` is empty when
/// `input_grad` is false.
pub(crate) fn backward(
    w: &CpuNf4<'_>,
    dy: &[f32],
    x: &[f32],
    h: &[f32],
    m: usize,
    lora: &HostLora<'_>,
    input_grad: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, k, r) = (w.out_features(), w.in_features(), lora.r);
    assert_eq!(dy.len(), m * n, "nf4_lora_linear_backward: gradient length");
    assert_eq!(x.len(), m * k, "nf4_lora_linear_backward: input length");
    let mut dh = vec![0f32; m * r];
    let mut db = vec![0f32; n * r];
    let mut da = vec![0f32; r * k];
    // On a bf16 tier `dh = s · dy · B` multiplies the chunks of `dy` the base's input gradient
    // packed, on the same kernel.
    let mut shared = false;
    let mut dx = if input_grad {
        w.linear_backward_input_sharing(dy, m, |tier, c0, dya| {
            if r > 0 {
                share_dy_b(tier, dya, c0, lora, &mut dh, shared);
                shared = true;
            }
        })
    } else {
        Vec::new()
    };
    if m == 0 || r == 0 {
        return (dx, da, db);
    }
    if shared {
        dh.iter_mut().for_each(|v| *v *= lora.scaling);
    } else {
        // dh[m, r] = s · dy[m, n] · B[n, r]
        // SAFETY: dy is [m, n], B is [n, r], dh is [m, r], all row-major.
        unsafe {
            gemm(
                (m, r, n),
                &mut dh,
                false,
                (dy.as_ptr(), 1, n as isize),
                (lora.b.as_ptr(), 1, r as isize),
                lora.scaling,
            );
        }
    }
    // dB[n, r] = dyᵀ[n, m] · h[m, r], the transpose of hᵀ · dy.
    let mut dbt = vec![0f32; r * n];
    outer_sum(&mut dbt, h, r, dy, n);
    db = transpose(&dbt, r, n);
    // dA[r, k] = dhᵀ[r, m] · dropout(x)[m, k]
    let dhx = |xd: &[f32], da: &mut [f32]| outer_sum(da, &dh, r, xd, k);
    // dh[m, r] · A[r, k], into `dst`
    let dha = |dst: &mut [f32], accumulate: bool| add_rank_r(dst, k, &dh, r, lora.a, accumulate);
    if lora.dropout > 0.0 {
        with_scratch(m * k, |s| {
            seeded_dropout_into(x, lora.dropout, lora.seed, s);
            dhx(s, &mut da);
            if input_grad {
                dha(s, false);
                seeded_dropout_add(s, lora.dropout, lora.seed, &mut dx);
            }
        });
    } else {
        dhx(x, &mut da);
        if input_grad {
            dha(&mut dx, true);
        }
    }
    (dx, da, db)
}

/// The transpose `[c, rows]` of a row-major `[rows, c]` matrix (`Bᵀ` of the adapter's `B`, `dB`
/// from its transpose).
fn transpose(b: &[f32], n: usize, r: usize) -> Vec<f32> {
    let mut bt = vec![0f32; r * n];
    for (j, row) in b.chunks_exact(r).enumerate() {
        for (kk, &v) in row.iter().enumerate() {
            bt[kk * n + j] = v;
        }
    }
    bt
}

/// `dh (+)= dy[:, c0..] · B[c0.., :]` for one bf16-packed chunk of `dy` (without the scaling).
fn share_dy_b(
    tier: Tier,
    dya: &PackedA,
    c0: usize,
    lora: &HostLora<'_>,
    dh: &mut [f32],
    acc: bool,
) {
    let r = lora.r;
    let b = PackedB::from_rows(dya.depth(), r, |q0, rows| {
        rows.copy_from_slice(&lora.b[(c0 + q0) * r..][..rows.len()]);
    });
    gemm_bf16(tier, dya, &b, dh, r, acc);
}
