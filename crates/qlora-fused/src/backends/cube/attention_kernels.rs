//! CubeCL kernels of the causal attention op: a tiled forward pass with an online softmax and
//! the two halves of its backward pass, none of which holds the `[b, h, tq, tk]` scores
//! (Dao et al. 2022, *FlashAttention*; the split of the backward pass into a query-side and a
//! key-side kernel is FlashAttention-2's, Dao 2023, so that no two cubes write one gradient row
//! and no atomics are needed).
//!
//! Each unit owns one row (a query row forward and for `dQ`, a key row for `dK`/`dV`) and keeps
//! it and its accumulators in registers; the cube's units share tiles of the other side's rows
//! through shared memory. Scores are `(scale · q) · k` in f32, in the same order in every kernel,
//! so the backward pass's recomputed probabilities are the forward pass's bits.
//!
//! Visibility is the op's: query `i` sits at key position `p = i + tk − tq` and sees keys
//! `first_key ..= p`, where the first key is `max(0, p + 1 − window, starts[b, i])` with a
//! sliding window and segment starts where the call has them (a row with `p < 0`, where there
//! are more queries than keys, sees none). Indices are unsigned (32-bit on some runtimes), so
//! `j ≤ p` is computed as `j + tq ≤ i + tk`.

use cubecl::prelude::*;

/// Units (rows) per cube.
pub(crate) const ROWS: usize = 32;

/// A score that no real one is below: `exp(FLOOR − s)` is 0 for every finite `s`.
const FLOOR: f32 = -3.0e38;

/// The log-sum-exp written for a row that sees no key: every recomputed probability is then 0.
const NO_KEYS: f32 = 3.0e38;

/// Rows of the other side per shared tile, for row widths `d` and `dv`: at most 16 KiB of
/// shared memory in all (every Vulkan device has it).
pub(crate) fn tile_rows(d: usize, dv: usize) -> usize {
    (4096 / (d + dv + 3)).clamp(1, 64)
}

/// The first key query `i` sees (`window` 0: none; `start`: its segment's): the larger of
/// `start` and `p + 1 − window` for `p = i + tk − tq`.
#[cube]
fn first_key(i: usize, tq: usize, tk: usize, window: usize, start: usize) -> usize {
    let mut lo = start;
    let p1 = i + tk + 1; // p + 1 + tq
    if window > 0 && p1 > tq + window {
        let w = p1 - tq - window;
        if w > lo {
            lo = w;
        }
    }
    lo
}

/// How many keys from `first` on the query rows `i0 .. i0 + ROWS` (those below `tq`) can see:
/// the last of them sees up to key `last + tk − tq` (none where that is below 0).
#[cube]
fn keys_seen(first: usize, i0: usize, tq: usize, tk: usize) -> usize {
    let mut last = i0 + ROWS;
    if last > tq {
        last = tq;
    }
    let mut count = 0usize;
    if last + tk > tq + first {
        count = last + tk - tq - first;
    }
    count
}

/// The segment start of query `i` of batch row `b` (0 unless `segmented`).
#[cube]
fn segment_start(
    starts: &[i32],
    b: usize,
    i: usize,
    tq: usize,
    #[comptime] segmented: bool,
) -> usize {
    let mut s = 0usize;
    if segmented {
        s = usize::cast_from(starts[b * tq + i]);
    }
    s
}

/// Loads rows `first .. first + tile` (those below `len`) of the row-major `[.., width]` rows
/// starting at row `base` of `src` into `dst`, times `factor`, the cube's units sharing the work.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tile<F: Float>(
    src: &[F],
    dst: &mut Shared<[f32]>,
    base: usize,
    first: usize,
    len: usize,
    factor: f32,
    #[comptime] width: usize,
    #[comptime] tile: usize,
) {
    let u = UNIT_POS_X as usize;
    let total = tile * width;
    for it in 0..total.div_ceil(ROWS) {
        let e = u + it * ROWS;
        if e < total {
            let row = first + e / width;
            let mut x = 0.0f32;
            if row < len {
                x = f32::cast_from(src[(base + row) * width + e % width]) * factor;
            }
            dst[e] = x;
        }
    }
}

/// `out[b, h, i, :] = Σ_j softmax_j(s_ij) · v[j, :]` over the keys query `i` sees, and
/// `lse[b, h, i] = log Σ_j exp(s_ij)` (for the backward pass) where `with_lse`.
///
/// Cubes: `(query tiles of ROWS, h, b)`; unit `u` owns query row `tile · ROWS + u`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_forward_kernel<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    starts: &[i32],
    out: &mut [F],
    lse: &mut [f32],
    h: usize,
    kvh: usize,
    tq: usize,
    tk: usize,
    window: usize,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] dv: usize,
    #[comptime] tile: usize,
    #[comptime] segmented: bool,
    #[comptime] with_lse: bool,
    #[define(F)] _dtype: ElemType,
) {
    let b = CUBE_POS_Z as usize;
    let head = CUBE_POS_Y as usize;
    let bh = b * h + head;
    let i0 = CUBE_POS_X as usize * ROWS;
    let i = i0 + UNIT_POS_X as usize;
    let kv_base = (b * kvh + head / (h / kvh)) * tk;
    let active = i < tq;

    let mut qr = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(dv);
    for c in 0..d {
        qr[c] = 0.0f32;
    }
    for c in 0..dv {
        acc[c] = 0.0f32;
    }
    let mut lo = 0usize;
    if active {
        for c in 0..d {
            qr[c] = f32::cast_from(q[(bh * tq + i) * d + c]) * scale;
        }
        lo = first_key(
            i,
            tq,
            tk,
            window,
            segment_start(starts, b, i, tq, segmented),
        );
    }

    let mut ks = Shared::<[f32]>::new_slice(tile * d);
    let mut vs = Shared::<[f32]>::new_slice(tile * dv);
    let span_lo = first_key(i0, tq, tk, window, 0usize);
    let keys = keys_seen(span_lo, i0, tq, tk);
    let mut m = f32::new(FLOOR);
    let mut l = 0.0f32;
    for t in 0..keys.div_ceil(tile) {
        let j0 = span_lo + t * tile;
        load_tile::<F>(k, &mut ks, kv_base, j0, tk, 1.0f32, d, tile);
        load_tile::<F>(v, &mut vs, kv_base, j0, tk, 1.0f32, dv, tile);
        sync_cube();
        if active {
            for jj in 0..tile {
                let j = j0 + jj;
                if j >= lo && j + tq <= i + tk {
                    let mut s = 0.0f32;
                    for c in 0..d {
                        s += qr[c] * ks[jj * d + c];
                    }
                    let mut m_new = m;
                    if s > m_new {
                        m_new = s;
                    }
                    let alpha = (m - m_new).exp();
                    let p = (s - m_new).exp();
                    l = l * alpha + p;
                    for c in 0..dv {
                        acc[c] = acc[c] * alpha + p * vs[jj * dv + c];
                    }
                    m = m_new;
                }
            }
        }
        sync_cube();
    }
    if active {
        let mut inv = 0.0f32;
        if l > 0.0f32 {
            inv = 1.0f32 / l;
        }
        for c in 0..dv {
            out[(bh * tq + i) * dv + c] = F::cast_from(acc[c] * inv);
        }
        if with_lse {
            let mut x = f32::new(NO_KEYS);
            if l > 0.0f32 {
                x = m + l.ln();
            }
            lse[bh * tq + i] = x;
        }
    }
}

/// `dq[b, h, i, :] = scale · Σ_j p_ij (dp_ij − D_i) · k[j, :]` with `p_ij = exp(s_ij − lse_i)`,
/// `dp_ij = dout_i · v_j` and `D_i = dout_i · out_i`, which it writes to `dsum` for the
/// key-side kernel.
///
/// Cubes as [`attention_forward_kernel`]'s.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward_query_kernel<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    starts: &[i32],
    out: &[F],
    dout: &[F],
    lse: &[f32],
    dq: &mut [F],
    dsum: &mut [f32],
    h: usize,
    kvh: usize,
    tq: usize,
    tk: usize,
    window: usize,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] dv: usize,
    #[comptime] tile: usize,
    #[comptime] segmented: bool,
    #[define(F)] _dtype: ElemType,
) {
    let b = CUBE_POS_Z as usize;
    let head = CUBE_POS_Y as usize;
    let bh = b * h + head;
    let i0 = CUBE_POS_X as usize * ROWS;
    let i = i0 + UNIT_POS_X as usize;
    let kv_base = (b * kvh + head / (h / kvh)) * tk;
    let active = i < tq;
    let row = bh * tq + i;

    let mut qr = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(d);
    let mut dor = Array::<f32>::new(dv);
    for c in 0..d {
        qr[c] = 0.0f32;
        acc[c] = 0.0f32;
    }
    for c in 0..dv {
        dor[c] = 0.0f32;
    }
    let mut lo = 0usize;
    let mut row_lse = f32::new(NO_KEYS);
    let mut dd = 0.0f32;
    if active {
        for c in 0..d {
            qr[c] = f32::cast_from(q[row * d + c]) * scale;
        }
        for c in 0..dv {
            let g = f32::cast_from(dout[row * dv + c]);
            dor[c] = g;
            dd += g * f32::cast_from(out[row * dv + c]);
        }
        lo = first_key(
            i,
            tq,
            tk,
            window,
            segment_start(starts, b, i, tq, segmented),
        );
        row_lse = lse[row];
        dsum[row] = dd;
    }

    let mut ks = Shared::<[f32]>::new_slice(tile * d);
    let mut vs = Shared::<[f32]>::new_slice(tile * dv);
    let span_lo = first_key(i0, tq, tk, window, 0usize);
    let keys = keys_seen(span_lo, i0, tq, tk);
    for t in 0..keys.div_ceil(tile) {
        let j0 = span_lo + t * tile;
        load_tile::<F>(k, &mut ks, kv_base, j0, tk, 1.0f32, d, tile);
        load_tile::<F>(v, &mut vs, kv_base, j0, tk, 1.0f32, dv, tile);
        sync_cube();
        if active {
            for jj in 0..tile {
                let j = j0 + jj;
                if j >= lo && j + tq <= i + tk {
                    let mut s = 0.0f32;
                    for c in 0..d {
                        s += qr[c] * ks[jj * d + c];
                    }
                    let p = (s - row_lse).exp();
                    let mut dp = 0.0f32;
                    for c in 0..dv {
                        dp += dor[c] * vs[jj * dv + c];
                    }
                    let ds = p * (dp - dd);
                    for c in 0..d {
                        acc[c] += ds * ks[jj * d + c];
                    }
                }
            }
        }
        sync_cube();
    }
    if active {
        for c in 0..d {
            dq[row * d + c] = F::cast_from(acc[c] * scale);
        }
    }
}

/// `dk[b, g, j, :] = Σ_{h in g's group} Σ_i p_ij (dp_ij − D_i) · scale · q_i` and
/// `dv[b, g, j, :] = Σ Σ_i p_ij · dout_i`, over the queries that see key `j`.
///
/// Cubes: `(key tiles of ROWS, kvh, b)`; unit `u` owns key row `tile · ROWS + u` of kv head
/// `g` and loops over the query heads of its group.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward_key_kernel<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    starts: &[i32],
    dout: &[F],
    lse: &[f32],
    dsum: &[f32],
    dk: &mut [F],
    dv_out: &mut [F],
    h: usize,
    kvh: usize,
    tq: usize,
    tk: usize,
    window: usize,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] dv: usize,
    #[comptime] tile: usize,
    #[comptime] segmented: bool,
    #[define(F)] _dtype: ElemType,
) {
    let b = CUBE_POS_Z as usize;
    let g = CUBE_POS_Y as usize;
    let bg = b * kvh + g;
    let j0 = CUBE_POS_X as usize * ROWS;
    let j = j0 + UNIT_POS_X as usize;
    let group = h / kvh;
    let active = j < tk;
    let krow = bg * tk + j;

    let mut kr = Array::<f32>::new(d);
    let mut vr = Array::<f32>::new(dv);
    let mut dka = Array::<f32>::new(d);
    let mut dva = Array::<f32>::new(dv);
    for c in 0..d {
        kr[c] = 0.0f32;
        dka[c] = 0.0f32;
    }
    for c in 0..dv {
        vr[c] = 0.0f32;
        dva[c] = 0.0f32;
    }
    if active {
        for c in 0..d {
            kr[c] = f32::cast_from(k[krow * d + c]);
        }
        for c in 0..dv {
            vr[c] = f32::cast_from(v[krow * dv + c]);
        }
    }

    // The queries that can see a key of this tile: `p = i + tk − tq ≥ j0`, and with a window
    // `p < j_last + window`, i.e. `i + tk < j_last + window + tq`.
    let mut span_lo = 0usize;
    if j0 + tq > tk {
        span_lo = j0 + tq - tk;
    }
    let mut span_end = tq;
    let mut j_last = j0 + ROWS - 1;
    if j_last >= tk {
        j_last = tk - 1;
    }
    if window > 0 {
        let reach = j_last + window + tq;
        if reach <= tk {
            span_end = 0usize;
        } else if reach - tk < span_end {
            span_end = reach - tk;
        }
    }
    let mut queries = 0usize;
    if span_end > span_lo {
        queries = span_end - span_lo;
    }

    let mut qs = Shared::<[f32]>::new_slice(tile * d);
    let mut dos = Shared::<[f32]>::new_slice(tile * dv);
    let mut stats = Shared::<[f32]>::new_slice(tile * 2);
    let mut firsts = Shared::<[u32]>::new_slice(tile);
    let u = UNIT_POS_X as usize;
    for gi in 0..group {
        let bh = b * h + g * group + gi;
        let q_base = bh * tq;
        for t in 0..queries.div_ceil(tile) {
            let i0 = span_lo + t * tile;
            load_tile::<F>(q, &mut qs, q_base, i0, tq, scale, d, tile);
            load_tile::<F>(dout, &mut dos, q_base, i0, tq, 1.0f32, dv, tile);
            for it in 0..tile.div_ceil(ROWS) {
                let e = u + it * ROWS;
                if e < tile {
                    let i = i0 + e;
                    let mut x = f32::new(NO_KEYS);
                    let mut y = 0.0f32;
                    let mut f = 0usize;
                    if i < tq {
                        x = lse[q_base + i];
                        y = dsum[q_base + i];
                        f = first_key(
                            i,
                            tq,
                            tk,
                            window,
                            segment_start(starts, b, i, tq, segmented),
                        );
                    }
                    stats[e * 2] = x;
                    stats[e * 2 + 1] = y;
                    firsts[e] = f as u32;
                }
            }
            sync_cube();
            if active {
                for ii in 0..tile {
                    let i = i0 + ii;
                    if i < tq && j >= firsts[ii] as usize && j + tq <= i + tk {
                        let mut s = 0.0f32;
                        for c in 0..d {
                            s += qs[ii * d + c] * kr[c];
                        }
                        let p = (s - stats[ii * 2]).exp();
                        let mut dp = 0.0f32;
                        for c in 0..dv {
                            let g_c = dos[ii * dv + c];
                            dva[c] += p * g_c;
                            dp += g_c * vr[c];
                        }
                        let ds = p * (dp - stats[ii * 2 + 1]);
                        for c in 0..d {
                            dka[c] += ds * qs[ii * d + c];
                        }
                    }
                }
            }
            sync_cube();
        }
    }
    if active {
        for c in 0..d {
            dk[krow * d + c] = F::cast_from(dka[c]);
        }
        for c in 0..dv {
            dv_out[krow * dv + c] = F::cast_from(dva[c]);
        }
    }
}
