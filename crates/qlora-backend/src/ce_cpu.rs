//! The fused linear + cross-entropy kernel on host memory (see [`crate::ce_ops`]): chunks of
//! rows, each chunk's logits computed with the `gemm` crate into a per-task buffer, one
//! vectorised pass per row for the log-sum-exp and the softmax gradient (one `exp` per logit),
//! a second product for the input gradient. Chunks run on every core; a chunk's logits are the only large buffer.

use rayon::prelude::*;

use crate::cpu::gemm_acc;
use crate::softmax_row::softmax_numerators;

/// Logit elements per chunk buffer (16 MiB of f32).
const CHUNK_LOGITS: usize = 1 << 22;

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
    let rows = (CHUNK_LOGITS / v.max(1)).clamp(1, 256);
    let mut logits = vec![0f32; rows.min(n.max(1)) * v];
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        let lg = &mut logits[..m * v];
        // SAFETY: as in `linear_cross_entropy`: lg is [m, v], x rows r0.. are [m, h].
        unsafe {
            gemm_acc(
                (m, v, h),
                (lg.as_mut_ptr(), v as isize, false),
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

/// `[n, h + 1]` (input gradient, then the loss) with `with_grad`, else `[n]` losses.
///
/// # Panics
/// If a target of a weighted row is outside `0..v`.
pub fn linear_cross_entropy(inp: &CeInputs<'_>, with_grad: bool) -> Vec<f32> {
    let (h, v) = (inp.h, inp.v);
    let n = inp.targets.len();
    let width = if with_grad { h + 1 } else { 1 };
    let mut out = vec![0f32; n * width];
    let rows = (CHUNK_LOGITS / v.max(1)).clamp(1, 256);
    out.par_chunks_mut(rows * width)
        .enumerate()
        .for_each(|(c, out)| {
            let r0 = c * rows;
            let m = out.len() / width;
            let mut logits = vec![0f32; m * v];
            // SAFETY: `logits` is [m, v]; x rows r0.. are [m, h]; wᵀ is read as [h, v] with
            // column stride h and row stride 1 within `w` ([v, h]).
            unsafe {
                gemm_acc(
                    (m, v, h),
                    (logits.as_mut_ptr(), v as isize, false),
                    (inp.x[r0 * h..].as_ptr(), h as isize),
                    (inp.w.as_ptr(), h as isize, 1),
                    gemm::Parallelism::None,
                );
            }
            for (i, row) in logits.chunks_exact_mut(v).enumerate() {
                let loss = softmax_grad_row(row, inp.targets[r0 + i], inp.weights[r0 + i]);
                out[i * width + width - 1] = loss;
            }
            if with_grad {
                // SAFETY: `out` rows have stride h + 1, the first h columns receive
                // dlogits [m, v] · w [v, h] (w read row-major: column stride 1, row stride h).
                unsafe {
                    gemm_acc(
                        (m, h, v),
                        (out.as_mut_ptr(), width as isize, false),
                        (logits.as_ptr(), v as isize),
                        (inp.w.as_ptr(), 1, h as isize),
                        gemm::Parallelism::None,
                    );
                }
            }
        });
    out
}
