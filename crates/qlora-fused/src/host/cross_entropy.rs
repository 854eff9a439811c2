//! The fused linear + cross-entropy kernel on host memory (see
//! [`crate::ops::LinearCrossEntropyOps`]): chunks of
//! rows, each chunk's logits computed with the `gemm` crate into a per-task buffer, one
//! vectorised pass per row for the log-sum-exp and the softmax gradient (one `exp` per logit),
//! a second product for the input gradient. Chunks run on every core; a chunk's logits are the only large buffer.
//!
//! With a bf16 tier set (`qlora_cpu_gemm::set_matmul_tier`), the two products of the loss
//! and its input gradient take bf16 operands with f32 accumulation: the head weight is packed
//! once per call in both layouts; the log-sum-exp, the softmax and the loss stay f32.

use qlora_cpu_gemm::{PackedA, PackedB, Tier, gemm_bf16, gemm_bf16_uninit, matmul_tier};
use rayon::prelude::*;

use super::softmax_row::softmax_numerators;

/// Logit elements per chunk buffer (16 MiB of f32).
const CHUNK_LOGITS: usize = 1 << 22;

/// From this many rows on, the bf16 products pay for packing the whole head weight (twice:
/// `v × h` elements each) once per call; below it the f32 products run.
const BF16_MIN_ROWS: usize = 256;

/// The head weight packed for the bf16 products: `wt` for the logits (`x · Wᵀ`), `w` for the
/// input gradient (`dlogits · W`).
pub(crate) struct Bf16Head {
    pub(crate) tier: Tier,
    wt: PackedB,
    w: Option<PackedB>,
}

impl Bf16Head {
    /// Whether it serves the input gradient too.
    pub(crate) fn has_grad(&self) -> bool {
        self.w.is_some()
    }
}

/// Whether the products of a call over these inputs run in bf16: a bf16 tier is set and there
/// are rows enough to pay for packing the head.
pub(crate) fn uses_bf16_head(inp: &CeInputs<'_>) -> bool {
    matmul_tier() != Tier::F32 && inp.targets.len() >= BF16_MIN_ROWS
}

/// The packed head (with the input gradient's layout too when `with_grad`), when
/// [`uses_bf16_head`].
pub(crate) fn bf16_head(inp: &CeInputs<'_>, with_grad: bool) -> Option<Bf16Head> {
    if !uses_bf16_head(inp) {
        return None;
    }
    let tier = matmul_tier();
    let (h, v) = (inp.h, inp.v);
    let wt = PackedB::from_columns(h, v, |j0, cols| {
        cols.copy_from_slice(&inp.w[j0 * h..j0 * h + cols.len()])
    });
    let w = with_grad.then(|| {
        PackedB::from_rows(v, h, |r0, rows| {
            rows.copy_from_slice(&inp.w[r0 * h..r0 * h + rows.len()])
        })
    });
    Some(Bf16Head { tier, wt, w })
}

/// Host rows for [`linear_cross_entropy`]: `x` `[n, h]`, `w` `[v, h]`, `targets` `[n]`,
/// `weights` `[n]`, all row-major.
pub struct CeInputs<'a> {
    /// Rows.
    pub x: &'a [f32],
    /// Head weight.
    pub w: &'a [f32],
    /// Target ids.
    pub targets: &'a [i64],
    /// Row weights.
    pub weights: &'a [f32],
    /// Features per row.
    pub h: usize,
    /// Vocabulary size.
    pub v: usize,
}

/// Row `row` of logits becomes its loss gradient `a · (softmax(row) − onehot(t))`; returns
/// the row's loss `a · (logsumexp(row) − row[t])` (0 and a zero row when `a` is 0).
///
/// # Panics
/// If a weighted row's target is outside the row.
fn softmax_grad_row(row: &mut [f32], t: i64, a: f32) -> f32 {
    let v = row.len();
    if a == 0.0 {
        row.fill(0.0);
        return 0.0;
    }
    assert!(
        (0..v as i64).contains(&t),
        "linear_cross_entropy: target {t} is outside the vocabulary 0..{v}"
    );
    let target_logit = row[t as usize];
    // One exp per logit: the row becomes exp(x - max), then the softmax times a.
    let (max, sum) = softmax_numerators(row);
    let lse = max + sum.ln();
    let scale = a / sum;
    for x in row.iter_mut() {
        *x *= scale;
    }
    row[t as usize] -= a;
    a * (lse - target_logit)
}

/// The head weight's gradient `dW = Σ_i a_i (softmax(x_i·Wᵀ) − onehot(t_i))ᵀ x_i`, `[v, h]`
/// row-major, chunk by chunk: a chunk's logits, their gradient, then `dW += dlogitsᵀ · x`
/// (each product on every core), so that only one chunk of logits is ever held.
pub fn linear_cross_entropy_weight_grad(inp: &CeInputs<'_>) -> Vec<f32> {
    let (h, v) = (inp.h, inp.v);
    let n = inp.targets.len();
    let mut dw = vec![0f32; v * h];
    let rows = rows_per_chunk(v, false);
    let mut logits = vec![0f32; rows.min(n.max(1)) * v];
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        let lg = &mut logits[..m * v];
        // SAFETY: as in `chunk`: lg is [m, v], x rows r0.. are [m, h].
        unsafe {
            gemm_into(
                (m, v, h),
                (lg.as_mut_ptr(), v as isize),
                (inp.x[r0 * h..].as_ptr(), h as isize),
                (inp.w.as_ptr(), h as isize, 1),
                gemm::Parallelism::Rayon(0),
            );
        }
        lg.par_chunks_exact_mut(v).enumerate().for_each(|(i, row)| {
            softmax_grad_row(row, inp.targets[r0 + i], inp.weights[r0 + i]);
        });
        // dW [v, h] (+)= lgᵀ [v, m] · x [m, h]: lgᵀ has column stride v and row stride 1.
        // SAFETY: dw is [v, h]; lg is [m, v]; the x rows are [m, h]; nothing else writes dw.
        unsafe {
            gemm::gemm(
                v,
                h,
                m,
                dw.as_mut_ptr(),
                1,
                h as isize,
                r0 > 0,
                lg.as_ptr(),
                v as isize,
                1,
                inp.x[r0 * h..].as_ptr(),
                1,
                h as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    dw
}

/// The per-row losses `[n]` (the head packed for this call alone).
///
/// # Panics
/// If a target of a weighted row is outside `0..v`.
#[cfg(test)]
pub fn linear_cross_entropy(inp: &CeInputs<'_>) -> Vec<f32> {
    linear_cross_entropy_packed(inp, bf16_head(inp, false).as_ref())
}

/// [`linear_cross_entropy`] with the head already packed (`None`: the f32 products).
pub(crate) fn linear_cross_entropy_packed(inp: &CeInputs<'_>, bf16: Option<&Bf16Head>) -> Vec<f32> {
    let mut loss = vec![0f32; inp.targets.len()];
    let rows = rows_per_chunk(inp.v, bf16.is_some());
    loss.par_chunks_mut(rows)
        .enumerate()
        .for_each(|(c, loss)| chunk(inp, c * rows, loss, None, bf16));
    loss
}

/// The per-row losses `[n]` and their input gradients `[n, h]` (row-major), from one pass
/// (the head packed for this call alone).
///
/// # Panics
/// As [`linear_cross_entropy`].
#[cfg(test)]
pub fn linear_cross_entropy_with_grad(inp: &CeInputs<'_>) -> (Vec<f32>, Vec<f32>) {
    linear_cross_entropy_with_grad_packed(inp, bf16_head(inp, true).as_ref())
}

/// [`linear_cross_entropy_with_grad`] with the head already packed for both products
/// (`None`: the f32 products).
///
/// # Panics
/// If the packed head lacks the input gradient's layout.
pub(crate) fn linear_cross_entropy_with_grad_packed(
    inp: &CeInputs<'_>,
    bf16: Option<&Bf16Head>,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        bf16.is_none_or(Bf16Head::has_grad),
        "linear_cross_entropy: a packed head without the gradient's layout"
    );
    let (n, h) = (inp.targets.len(), inp.h);
    let (mut loss, mut dx) = (vec![0f32; n], vec![0f32; n * h]);
    let rows = rows_per_chunk(inp.v, bf16.is_some());
    loss.par_chunks_mut(rows)
        .zip(dx.par_chunks_mut(rows * h))
        .enumerate()
        .for_each(|(c, (loss, dx))| chunk(inp, c * rows, loss, Some(dx), bf16));
    (loss, dx)
}

/// Rows per chunk of logits: at most [`CHUNK_LOGITS`] logits, at most 256 rows; for the bf16
/// products a multiple of 32 (one block of the kernels' output).
fn rows_per_chunk(v: usize, bf16: bool) -> usize {
    let rows = (CHUNK_LOGITS / v.max(1)).clamp(1, 256);
    if bf16 { (rows / 32 * 32).max(32) } else { rows }
}

/// The rows `r0 .. r0 + loss.len()`: their logits into a buffer of the task, then each row's
/// loss into `loss` and, with `dx` (`[rows, h]`), the input gradient `dlogits · w`.
fn chunk(
    inp: &CeInputs<'_>,
    r0: usize,
    loss: &mut [f32],
    dx: Option<&mut [f32]>,
    bf16: Option<&Bf16Head>,
) {
    let (h, v, m) = (inp.h, inp.v, loss.len());
    if let Some(b) = bf16 {
        let a = PackedA::from_f32(&inp.x[r0 * h..], m, h, h);
        // Written whole by the product, not zeroed first.
        let mut logits = Vec::with_capacity(m * v);
        gemm_bf16_uninit(
            b.tier,
            &a,
            &b.wt,
            &mut logits.spare_capacity_mut()[..m * v],
            v,
        );
        // SAFETY: `gemm_bf16_uninit` wrote all `[m, v]` elements (row stride v).
        unsafe { logits.set_len(m * v) };
        for (i, row) in logits.chunks_exact_mut(v).enumerate() {
            loss[i] = softmax_grad_row(row, inp.targets[r0 + i], inp.weights[r0 + i]);
        }
        if let (Some(dx), Some(w)) = (dx, &b.w) {
            assert_eq!(dx.len(), m * h, "linear_cross_entropy: gradient chunk");
            let a = PackedA::from_f32(&logits, m, v, v);
            gemm_bf16(b.tier, &a, w, dx, h, false);
        }
        return;
    }
    let mut logits = vec![0f32; m * v];
    // SAFETY: `logits` is [m, v]; x rows r0.. are [m, h]; wᵀ is read as [h, v] with column
    // stride h and row stride 1 within `w` ([v, h]).
    unsafe {
        gemm_into(
            (m, v, h),
            (logits.as_mut_ptr(), v as isize),
            (inp.x[r0 * h..].as_ptr(), h as isize),
            (inp.w.as_ptr(), h as isize, 1),
            gemm::Parallelism::None,
        );
    }
    for (i, row) in logits.chunks_exact_mut(v).enumerate() {
        loss[i] = softmax_grad_row(row, inp.targets[r0 + i], inp.weights[r0 + i]);
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len(), m * h, "linear_cross_entropy: gradient chunk");
        // SAFETY: `dx` is [m, h] row-major and receives dlogits [m, v] · w [v, h] (w read
        // row-major: column stride 1, row stride h).
        unsafe {
            gemm_into(
                (m, h, v),
                (dx.as_mut_ptr(), h as isize),
                (logits.as_ptr(), v as isize),
                (inp.w.as_ptr(), 1, h as isize),
                gemm::Parallelism::None,
            );
        }
    }
}

/// `out[m, n] = lhs[m, k] · rhs[k, n]` for row-major `out` and `lhs` (unit column stride,
/// given row stride) and `rhs` with given column and row strides.
///
/// # Safety
/// Every pointer is valid for the extents its strides and sizes imply, and `out` is not
/// written by anyone else meanwhile.
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    (out, out_rs): (*mut f32, isize),
    (lhs, lhs_rs): (*const f32, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller; `out` is overwritten, not read (`read_dst` false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_rs,
            false,
            lhs,
            1,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}
