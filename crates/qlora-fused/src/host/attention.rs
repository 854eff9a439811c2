//! The fused causal attention of [`crate::ops::CausalAttentionOps`] on host memory.
//!
//! Forward, one task per (batch, query head), run on every core: for each block of [`ROWS`]
//! query rows, the scores of the keys the block can see
//! (`S = scale · Q·Kᵀ`, no key right of the block's last row computed), a masked softmax per
//! row with one vectorised `exp` per score, then `O = P·V`. The `[rows, keys]` score block is the
//! only scratch: the `[batch, heads, len, len]` scores never exist. With a sliding window `W`
//! (Mistral), query `i` sees only the last `W` keys up to its own position; the keys before a
//! row's window get probability 0, as the causal future does.
//!
//! The backward pass recomputes `P` block by block (as FlashAttention does, Dao et al. 2022):
//! `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dQ = scale · dS·K`,
//! `dK += scale · dSᵀ·Q`. A task owns its kv head, so the group's query heads accumulate into
//! its `dK`/`dV` without races.
//!
//! On a bf16 tier ([`Tier`], `qlora_cpu_gemm::set_matmul_tier`) the products run on the bf16
//! kernel instead: see `attention_bf16`.

use qlora_cpu_gemm::Tier;
use rayon::prelude::*;

use super::softmax_row::softmax_numerators;
use super::wide::{dot16, multiversion};

/// Whether the products run on the bf16 `tier`: a bf16 tier, and query blocks of at least
/// one output block (prefill and training; a decoding step's single row stays f32).
fn uses_bf16(s: &AttnShape, tier: Tier) -> bool {
    tier != Tier::F32 && s.tq >= 32
}

/// Query rows per block: the block's scores (`ROWS × keys` f32) stay in L2 for the few
/// thousand keys of a training sequence.
pub(super) const ROWS: usize = 64;

/// Shapes of one attention call (checked by `attn_ops::dims`): queries `[b, h, tq, d]`, keys `[b, kvh, tk, d]`, values
/// `[b, kvh, tk, dv]`, all row-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Batch.
    pub b: usize,
    /// Query heads (a multiple of `kvh`).
    pub h: usize,
    /// Key/value heads.
    pub kvh: usize,
    /// Query positions.
    pub tq: usize,
    /// Key positions (`≥ tq`: query `i` sees keys `0 ..= i + tk − tq`).
    pub tk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
    /// Score scale (usually `1/√d`).
    pub scale: f32,
    /// Sliding window: query `i` (at key position `p = i + tk − tq`) sees keys
    /// `p − W < j ≤ p` (transformers' `sliding_window` mask); `None`: every key up to `p`.
    pub window: Option<usize>,
}

impl AttnShape {
    /// Keys visible to query row `i`: `first(i) .. visible(i)`.
    pub(super) fn visible(&self, i: usize) -> usize {
        (i + 1 + self.tk).saturating_sub(self.tq).min(self.tk)
    }

    /// The first key query row `i` sees (0 without a window).
    fn first(&self, i: usize) -> usize {
        self.window.map_or(0, |w| self.visible(i).saturating_sub(w))
    }
}

/// `dst[m, n] (+)= beta · lhs[m, k] · rhs[k, n]`, every operand given by its (row, column)
/// strides, single-threaded (parallelism is over heads).
///
/// # Safety
/// The pointers must cover the strided extents, `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn mm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The first key query row `i` sees: [`AttnShape::first`], and with segment `starts` (the
/// first key of each query's sample, padding-free batches) not before its sample's start.
pub(super) fn first_key(s: &AttnShape, starts: Option<&[i64]>, i: usize) -> usize {
    let own = starts.map_or(0, |st| st[i].max(0) as usize);
    s.first(i).max(own).min(s.visible(i))
}

/// The keys `lo .. hi` that some row of the block `r0 .. r0 + rows` sees (the first keys grow
/// with the row, windows and segments alike).
pub(super) fn key_span(
    s: &AttnShape,
    starts: Option<&[i64]>,
    r0: usize,
    rows: usize,
) -> (usize, usize) {
    let hi = s.visible(r0 + rows - 1);
    let lo = (r0..r0 + rows)
        .map(|i| first_key(s, starts, i))
        .min()
        .unwrap_or(0)
        .min(hi);
    (lo, hi)
}

/// Rows `r0 .. r0 + rows` of `P = softmax(scale · Q·Kᵀ)` (masked) into `p` `[rows, hi − lo]`
/// for the block's keys `lo .. hi` ([`key_span`]); entries outside a row's visible keys are 0.
fn probabilities(
    s: &AttnShape,
    starts: Option<&[i64]>,
    q: &[f32],
    k: &[f32],
    r0: usize,
    rows: usize,
    p: &mut [f32],
) {
    let (lo, hi) = key_span(s, starts, r0, rows);
    let keys = hi - lo;
    if keys == 0 {
        return;
    }
    // SAFETY: q holds rows r0.. of d values, k holds rows lo..hi of d values, p holds
    // rows × keys.
    unsafe {
        mm(
            (rows, keys, s.d),
            p.as_mut_ptr(),
            keys,
            false,
            (q[r0 * s.d..].as_ptr(), s.d, 1),
            (k[lo * s.d..].as_ptr(), 1, s.d),
            s.scale,
        );
    }
    masked_softmax(s, starts, (r0, rows), (lo, keys), p, None);
}

/// Rows `r0 .. r0 + rows` of scores `p` `[rows, keys]` (keys `lo ..`) become their masked
/// softmax, each score first multiplied by `scale` where given; keys outside a row's visible
/// ones get 0.
pub(super) fn masked_softmax(
    s: &AttnShape,
    starts: Option<&[i64]>,
    (r0, rows): (usize, usize),
    (lo, keys): (usize, usize),
    p: &mut [f32],
    scale: Option<f32>,
) {
    masked_softmax_rows(s, starts, r0, lo, keys, &mut p[..rows * keys], scale)
}

multiversion! {
    /// [`masked_softmax`] on the rows of `p`.
    fn masked_softmax_rows(
        s: &AttnShape,
        starts: Option<&[i64]>,
        r0: usize,
        lo: usize,
        keys: usize,
        p: &mut [f32],
        scale: Option<f32>,
    ) {
    for (i, row) in p.chunks_exact_mut(keys).enumerate() {
        let (first, seen) = (first_key(s, starts, r0 + i) - lo, s.visible(r0 + i) - lo);
        let (live, masked) = row.split_at_mut(seen);
        masked.fill(0.0);
        let (before, live) = live.split_at_mut(first);
        before.fill(0.0);
        if live.is_empty() {
            continue;
        }
        if let Some(scale) = scale {
            live.iter_mut().for_each(|x| *x *= scale);
        }
        let (_, sum) = softmax_numerators(live);
        let inv = 1.0 / sum;
        for x in live.iter_mut() {
            *x *= inv;
        }
    }
    }
}

/// Forward: `out` `[b, h, tq, dv]` of queries `q`, keys `k`, values `v` (see [`AttnShape`]);
/// with segment `starts` (`[b, tq]`: the first position of each query's sample in a
/// padding-free row) query `i` of batch row `b` sees no key before `starts[b, i]`.
///
/// # Panics
/// If a slice's length disagrees with the shape.
pub fn attention_forward(
    s: &AttnShape,
    starts: Option<&[i64]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tier: Tier,
) -> Vec<f32> {
    check(s, q, k, v);
    check_starts(s, starts);
    if uses_bf16(s, tier) {
        return super::attention_bf16::forward(s, starts, q, k, v, tier);
    }
    let (qs, ks, vs, os) = (s.tq * s.d, s.tk * s.d, s.tk * s.dv, s.tq * s.dv);
    let mut out = vec![0f32; s.b * s.h * os];
    let group = s.h / s.kvh;
    out.par_chunks_mut(os).enumerate().for_each_init(
        || vec![0f32; ROWS * s.tk],
        // `out` starts at 0: rows that see no key stay 0 (mm skips empty products).
        |p, (bh, o)| {
            let (bi, hi) = (bh / s.h, bh % s.h);
            let kv = bi * s.kvh + hi / group;
            let (q, k, v) = (
                &q[bh * qs..][..qs],
                &k[kv * ks..][..ks],
                &v[kv * vs..][..vs],
            );
            let starts = starts.map(|st| &st[bi * s.tq..][..s.tq]);
            for r0 in (0..s.tq).step_by(ROWS) {
                let rows = ROWS.min(s.tq - r0);
                let (lo, hi) = key_span(s, starts, r0, rows);
                let keys = hi - lo;
                probabilities(s, starts, q, k, r0, rows, p);
                // SAFETY: p is rows × keys, v holds rows lo..hi of dv, o rows r0.. of dv.
                unsafe {
                    mm(
                        (rows, s.dv, keys),
                        o[r0 * s.dv..].as_mut_ptr(),
                        s.dv,
                        false,
                        (p.as_ptr(), keys, 1),
                        (v[lo * s.dv..].as_ptr(), s.dv, 1),
                        1.0,
                    );
                }
            }
        },
    );
    out
}

/// Gradients of [`attention_forward`] for the upstream gradient `dout` `[b, h, tq, dv]`:
/// `(dq [b, h, tq, d], dk [b, kvh, tk, d], dv [b, kvh, tk, dv])`.
///
/// # Panics
/// If a slice's length disagrees with the shape.
pub fn attention_backward(
    s: &AttnShape,
    starts: Option<&[i64]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    tier: Tier,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(s, q, k, v);
    check_starts(s, starts);
    if uses_bf16(s, tier) {
        return super::attention_bf16::backward(s, starts, q, k, v, dout, tier);
    }
    let (qs, ks, vs, os) = (s.tq * s.d, s.tk * s.d, s.tk * s.dv, s.tq * s.dv);
    assert_eq!(
        dout.len(),
        s.b * s.h * os,
        "attention: upstream gradient length"
    );
    let group = s.h / s.kvh;
    let mut dq = vec![0f32; s.b * s.h * qs];
    let mut dk = vec![0f32; s.b * s.kvh * ks];
    let mut dvv = vec![0f32; s.b * s.kvh * vs];
    dq.par_chunks_mut(group * qs)
        .zip(dk.par_chunks_mut(ks).zip(dvv.par_chunks_mut(vs)))
        .enumerate()
        .for_each_init(
            || (vec![0f32; ROWS * s.tk], vec![0f32; ROWS * s.tk]),
            |(p, dp), (kv, (dq, (dk, dv)))| {
                let (k, v) = (&k[kv * ks..][..ks], &v[kv * vs..][..vs]);
                let starts = starts.map(|st| &st[(kv / s.kvh) * s.tq..][..s.tq]);
                for g in 0..group {
                    let bh = kv * group + g;
                    let (q, dout) = (&q[bh * qs..][..qs], &dout[bh * os..][..os]);
                    let dq = &mut dq[g * qs..][..qs];
                    for r0 in (0..s.tq).step_by(ROWS) {
                        let rows = ROWS.min(s.tq - r0);
                        let (lo, hi) = key_span(s, starts, r0, rows);
                        if hi == lo {
                            continue;
                        }
                        probabilities(s, starts, q, k, r0, rows, p);
                        block_backward(
                            s,
                            (q, &k[lo * s.d..], &v[lo * s.dv..], dout),
                            (dq, &mut dk[lo * s.d..], &mut dv[lo * s.dv..]),
                            (r0, rows, hi - lo),
                            p,
                            dp,
                        );
                    }
                }
            },
        );
    (dq, dk, dvv)
}

/// One block of rows of the backward pass, `p` holding its probabilities.
#[allow(clippy::type_complexity)]
fn block_backward(
    s: &AttnShape,
    (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]),
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    (r0, rows, keys): (usize, usize, usize),
    p: &[f32],
    dp: &mut [f32],
) {
    let d_o = &dout[r0 * s.dv..];
    // SAFETY (all products): p and dp are rows × keys; q, dq, dout hold rows r0.. of the
    // block; k, v, dk, dv hold `keys` rows.
    unsafe {
        // dV[..keys] += Pᵀ · dO
        mm(
            (keys, s.dv, rows),
            dv.as_mut_ptr(),
            s.dv,
            true,
            (p.as_ptr(), 1, keys),
            (d_o.as_ptr(), s.dv, 1),
            1.0,
        );
        // dP = dO · Vᵀ
        mm(
            (rows, keys, s.dv),
            dp.as_mut_ptr(),
            keys,
            false,
            (d_o.as_ptr(), s.dv, 1),
            (v.as_ptr(), 1, s.dv),
            1.0,
        );
    }
    score_grad(s.scale, p, dp, rows, keys);
    // SAFETY: as above.
    unsafe {
        // dQ[rows] = dS · K
        mm(
            (rows, s.d, keys),
            dq[r0 * s.d..].as_mut_ptr(),
            s.d,
            false,
            (dp.as_ptr(), keys, 1),
            (k.as_ptr(), s.d, 1),
            1.0,
        );
        // dK[..keys] += dSᵀ · Q[rows]
        mm(
            (keys, s.d, rows),
            dk.as_mut_ptr(),
            s.d,
            true,
            (dp.as_ptr(), 1, keys),
            (q[r0 * s.d..].as_ptr(), s.d, 1),
            1.0,
        );
    }
}

/// `dS = scale · P ∘ (dP − rowsum(P ∘ dP))`, in place of `dP` (`[rows, keys]` each).
pub(super) fn score_grad(scale: f32, p: &[f32], dp: &mut [f32], rows: usize, keys: usize) {
    score_grad_rows(scale, &p[..rows * keys], &mut dp[..rows * keys], keys)
}

multiversion! {
    /// [`score_grad`] over whole rows of `keys`.
    fn score_grad_rows(scale: f32, p: &[f32], dp: &mut [f32], keys: usize) {
        for (pr, dr) in p.chunks_exact(keys).zip(dp.chunks_exact_mut(keys)) {
            let dot = dot16(pr, dr);
            for (d, &pv) in dr.iter_mut().zip(pr) {
                *d = scale * pv * (*d - dot);
            }
        }
    }
}

pub(super) fn check_starts(s: &AttnShape, starts: Option<&[i64]>) {
    if let Some(st) = starts {
        assert_eq!(st.len(), s.b * s.tq, "attention: segment starts length");
    }
}

pub(super) fn check(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) {
    assert!(
        s.kvh > 0 && s.h.is_multiple_of(s.kvh),
        "attention: {} query heads are not a multiple of {} key/value heads",
        s.h,
        s.kvh
    );
    assert_eq!(q.len(), s.b * s.h * s.tq * s.d, "attention: query length");
    assert_eq!(k.len(), s.b * s.kvh * s.tk * s.d, "attention: key length");
    assert_eq!(
        v.len(),
        s.b * s.kvh * s.tk * s.dv,
        "attention: value length"
    );
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
