//! The fused causal attention's products on a bf16 tier (`qlora_cpu_gemm::set_matmul_tier`):
//! the scores `Q·Kᵀ`, `P·V`, and in the backward pass `dO·Vᵀ` and `dS·K` take bf16 operands with
//! f32 accumulation on the tier's kernel ([`gemm_bf16_serial`], one task's products on its own
//! core), as transformers' SDPA does under bf16 autocast. A task owns one key/value head:
//! `Kᵀ`, `V` (forward), `K` and `Vᵀ` (backward) are packed once for the group of query heads
//! that reads them, and every block of queries multiplies a view of them from its first key,
//! rounded down to the kernel's 32 (those extra keys get probability 0, as masked ones do).
//!
//! The softmax, its mask, the scale and the softmax's gradient stay f32, as do the two
//! products whose left operand is a transpose (`Pᵀ·dO` and `dSᵀ·Q`, through the `gemm` crate as
//! on the f32 path of [`super::attention`]).

use qlora_cpu_gemm::{PackedA, PackedB, Tier, gemm_bf16_serial};
use rayon::prelude::*;

use super::attention::{AttnShape, ROWS, key_span, masked_softmax, mm, score_grad};

/// The blocks of queries that see some key: `(r0, rows, lo, keys)` for the rows
/// `r0 .. r0 + rows` and their keys `lo .. lo + keys`, `lo` rounded down to the kernel's block.
fn query_blocks(
    s: &AttnShape,
    starts: Option<&[i64]>,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..s.tq).step_by(ROWS).filter_map(move |r0| {
        let rows = ROWS.min(s.tq - r0);
        let (lo, hi) = key_span(s, starts, r0, rows);
        let lo = lo / 32 * 32;
        (hi > lo).then_some((r0, rows, lo, hi - lo))
    })
}

/// `Kᵀ` `[d, tk]` of one head's keys `k` `[tk, d]`: its columns are `k`'s rows.
fn transposed(k: &[f32], d: usize, tk: usize) -> PackedB {
    PackedB::from_columns(d, tk, |j0, cols| {
        cols.copy_from_slice(&k[j0 * d..][..cols.len()])
    })
}

/// `x` `[t, d]` as the right operand.
fn rows_of(x: &[f32], t: usize, d: usize) -> PackedB {
    PackedB::from_rows(t, d, |r0, rows| {
        rows.copy_from_slice(&x[r0 * d..][..rows.len()])
    })
}

/// `p` `[rows, keys]` = the masked softmax of `scale · Q[r0 ..]·K[lo .. lo + keys]ᵀ`.
#[allow(clippy::too_many_arguments)]
fn probabilities(
    s: &AttnShape,
    starts: Option<&[i64]>,
    tier: Tier,
    q: &[f32],
    kt: &PackedB,
    (r0, rows): (usize, usize),
    (lo, keys): (usize, usize),
    p: &mut [f32],
) {
    let qa = PackedA::from_f32(&q[r0 * s.d..], rows, s.d, s.d);
    gemm_bf16_serial(
        tier,
        &qa,
        kt.view(0, lo, keys),
        &mut p[..rows * keys],
        keys,
        false,
    );
    masked_softmax(s, starts, (r0, rows), (lo, keys), p, Some(s.scale));
}

/// [`super::attention::attention_forward`] on `tier` (checked by the caller).
pub(super) fn forward(
    s: &AttnShape,
    starts: Option<&[i64]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tier: Tier,
) -> Vec<f32> {
    let (qs, ks, vs, os) = (s.tq * s.d, s.tk * s.d, s.tk * s.dv, s.tq * s.dv);
    let group = s.h / s.kvh;
    let mut out = vec![0f32; s.b * s.h * os];
    out.par_chunks_mut(group * os).enumerate().for_each_init(
        || vec![0f32; ROWS * s.tk],
        // `out` starts at 0: rows that see no key stay 0.
        |p, (kv, o)| {
            let kt = transposed(&k[kv * ks..][..ks], s.d, s.tk);
            let vb = rows_of(&v[kv * vs..][..vs], s.tk, s.dv);
            let starts = starts.map(|st| &st[(kv / s.kvh) * s.tq..][..s.tq]);
            for g in 0..group {
                // Query head bh = batch · h + head reads kv head batch · kvh + head / group.
                let q = &q[(kv * group + g) * qs..][..qs];
                let o = &mut o[g * os..][..os];
                for (r0, rows, lo, keys) in query_blocks(s, starts) {
                    probabilities(s, starts, tier, q, &kt, (r0, rows), (lo, keys), p);
                    let pa = PackedA::from_f32(p, rows, keys, keys);
                    gemm_bf16_serial(
                        tier,
                        &pa,
                        vb.view(lo, 0, s.dv),
                        &mut o[r0 * s.dv..],
                        s.dv,
                        false,
                    );
                }
            }
        },
    );
    out
}

/// [`super::attention::attention_backward`] on `tier` (checked by the caller).
pub(super) fn backward(
    s: &AttnShape,
    starts: Option<&[i64]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    tier: Tier,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qs, ks, vs, os) = (s.tq * s.d, s.tk * s.d, s.tk * s.dv, s.tq * s.dv);
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
                let (kt, kb, vt) = (
                    transposed(k, s.d, s.tk),
                    rows_of(k, s.tk, s.d),
                    transposed(v, s.dv, s.tk),
                );
                let starts = starts.map(|st| &st[(kv / s.kvh) * s.tq..][..s.tq]);
                for g in 0..group {
                    let bh = kv * group + g;
                    let (q, dout) = (&q[bh * qs..][..qs], &dout[bh * os..][..os]);
                    let dq = &mut dq[g * qs..][..qs];
                    for (r0, rows, lo, keys) in query_blocks(s, starts) {
                        probabilities(s, starts, tier, q, &kt, (r0, rows), (lo, keys), p);
                        let d_o = &dout[r0 * s.dv..];
                        // SAFETY: p is rows × keys; d_o holds `rows` rows of dv; dv holds the
                        // keys lo..hi at row stride dv.
                        unsafe {
                            // dV[lo..hi] += Pᵀ · dO
                            mm(
                                (keys, s.dv, rows),
                                dv[lo * s.dv..].as_mut_ptr(),
                                s.dv,
                                true,
                                (p.as_ptr(), 1, keys),
                                (d_o.as_ptr(), s.dv, 1),
                                1.0,
                            );
                        }
                        // dP = dO · V[lo..hi]ᵀ
                        let da = PackedA::from_f32(d_o, rows, s.dv, s.dv);
                        let dpb = &mut dp[..rows * keys];
                        gemm_bf16_serial(tier, &da, vt.view(0, lo, keys), dpb, keys, false);
                        score_grad(s.scale, p, dp, rows, keys);
                        // dQ[rows] = dS · K[lo..hi]
                        let sa = PackedA::from_f32(dp, rows, keys, keys);
                        let dqb = &mut dq[r0 * s.d..];
                        gemm_bf16_serial(tier, &sa, kb.view(lo, 0, s.d), dqb, s.d, false);
                        // SAFETY: dp is rows × keys; q holds rows r0.. of d; dk holds the keys
                        // lo..hi at row stride d.
                        unsafe {
                            // dK[lo..hi] += dSᵀ · Q[rows]
                            mm(
                                (keys, s.d, rows),
                                dk[lo * s.d..].as_mut_ptr(),
                                s.d,
                                true,
                                (dp.as_ptr(), 1, keys),
                                (q[r0 * s.d..].as_ptr(), s.d, 1),
                                1.0,
                            );
                        }
                    }
                }
            },
        );
    (dq, dk, dvv)
}
