//! The LoRA adapter's thin products (Hu et al. 2021: a rank-`r` update `B·A` beside a frozen
//! weight), written for their shapes: one side of each is the rank, 8–64 wide.
//!
//! - [`add_rank_r`]: `out[t, :] (+)= Σ_k u[t, k] · v[k, :]` — the adapter's output `h · Bᵀ` and
//!   its input gradient `dh · A`, `r` terms per output;
//! - [`outer_sum`]: `out[k, :] = Σ_t u[t, k] · w[t, :]` — the weight gradients `dhᵀ · x` and
//!   `(dyᵀ · h)ᵀ`, a sum over every token of `r` outer rows.
//!
//! A general GEMM (the `gemm` crate) packs both operands and blocks for a deep reduction; here
//! the depth is the rank (16 in the default job) or the output is `r` rows. Skipping each of
//! the four products in turn took 2–8 % off the default model's bf16 training step. On
//! AVX-512 these loops hold a tile of 4 × 64 outputs in sixteen registers over all its terms
//! and read each operand once per tile, with no packing pass; elsewhere, and at the edges,
//! plain loops vectorise the long contiguous dimension ([`super::wide::multiversion`]). Every
//! output adds its terms in one fixed order with fused multiply-adds (`f32::mul_add`), so the
//! bits depend on neither the path nor the threads. (They run at about 40–50 GFLOP/s a core
//! here, the rate of this CPU's f32 multiply-adds; AMX would need `x` and `dy` packed again
//! as right operands, which costs as much as these products.)

use rayon::prelude::*;

use super::wide::multiversion;

/// Columns per task of [`outer_sum`] (one register tile's width on AVX-512).
const SPAN: usize = 64;
/// Rows per task of [`add_rank_r`].
const ROWS_PER_TASK: usize = 16;

/// `out[t, j] = (out[t, j] if accumulate) + Σ_k u[t, k] · v[k, j]` for `out` `[m, n]`,
/// `u` `[m, r]`, `v` `[r, n]`, all row-major; rows spread over the cores.
///
/// # Panics
/// If the lengths disagree with the shapes (API misuse).
pub(crate) fn add_rank_r(
    out: &mut [f32],
    n: usize,
    u: &[f32],
    r: usize,
    v: &[f32],
    accumulate: bool,
) {
    assert_eq!(v.len(), r * n, "add_rank_r: v is not [r, n]");
    if n == 0 {
        return;
    }
    let m = out.len() / n;
    assert_eq!(out.len(), m * n, "add_rank_r: out is not [m, n]");
    assert_eq!(u.len(), m * r, "add_rank_r: u is not [m, r]");
    if r == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .zip(u.par_chunks(ROWS_PER_TASK * r))
        .for_each(|(o, u)| rank_r_rows(o, n, u, r, v, accumulate));
}

/// Whole rows of [`add_rank_r`]: on AVX-512, tiles of 4 rows × 64 columns with their
/// accumulators in registers over all `r` terms ([`avx512::rank_r_tiles`]); what is left (and
/// everything elsewhere) by [`rank_r_part`]. Both add the terms of an output in the same order
/// with the same fused multiply-adds, so the bits do not depend on the path.
fn rank_r_rows(out: &mut [f32], n: usize, u: &[f32], r: usize, v: &[f32], accumulate: bool) {
    let m = out.len() / n;
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            let (m4, n64) = (m / 4 * 4, n / 64 * 64);
            // SAFETY: the CPU has AVX-512F; out is [m, n], u is [m, r], v is [r, n] (checked by
            // add_rank_r), and the tiles cover rows < m4 ≤ m, columns < n64 ≤ n.
            unsafe { avx512::rank_r_tiles(out, n, u, r, v, accumulate, m4, n64) };
            rank_r_part(out, n, u, r, v, accumulate, (0, m4), (n64, n));
            rank_r_part(out, n, u, r, v, accumulate, (m4, m), (0, n));
            return;
        }
    }
    rank_r_part(out, n, u, r, v, accumulate, (0, m), (0, n));
}

multiversion! {
    /// Rows `t0 .. t1`, columns `j0 .. j1` of [`add_rank_r`], the long contiguous loop
    /// innermost (where LLVM vectorises it).
    fn rank_r_part(
        out: &mut [f32],
        n: usize,
        u: &[f32],
        r: usize,
        v: &[f32],
        accumulate: bool,
        rows: (usize, usize),
        cols: (usize, usize),
    ) {
        let ((t0, t1), (j0, j1)) = (rows, cols);
        for t in t0..t1 {
            let orow = &mut out[t * n + j0..t * n + j1];
            if !accumulate {
                orow.fill(0.0);
            }
            for (&uk, vrow) in u[t * r..][..r].iter().zip(v.chunks_exact(n)) {
                for (o, &vv) in orow.iter_mut().zip(&vrow[j0..j1]) {
                    *o = uk.mul_add(vv, *o);
                }
            }
        }
    }
}

/// `out[k, j] = Σ_t u[t, k] · w[t, j]` for `out` `[r, n]`, `u` `[m, r]`, `w` `[m, n]`, all
/// row-major: `uᵀ · w`. Columns spread over the cores; each sum runs over `t` in order.
///
/// # Panics
/// If the lengths disagree with the shapes (API misuse).
pub(crate) fn outer_sum(out: &mut [f32], u: &[f32], r: usize, w: &[f32], n: usize) {
    assert_eq!(out.len(), r * n, "outer_sum: out is not [r, n]");
    if r == 0 || n == 0 {
        return;
    }
    let m = u.len() / r;
    assert_eq!(u.len(), m * r, "outer_sum: u is not [m, r]");
    assert_eq!(w.len(), m * n, "outer_sum: w is not [m, n]");
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(SPAN))
        .into_par_iter()
        .map(|g| {
            let j0 = g * SPAN;
            let cols = SPAN.min(n - j0);
            let mut part = vec![0f32; r * cols];
            outer_sum_cols(&mut part, u, r, w, n, j0);
            part
        })
        .collect();
    for (g, part) in parts.iter().enumerate() {
        let j0 = g * SPAN;
        let cols = part.len() / r;
        for (k, row) in part.chunks_exact(cols).enumerate() {
            out[k * n + j0..][..cols].copy_from_slice(row);
        }
    }
}

/// Columns `j0 .. j0 + cols` of [`outer_sum`] into `part` `[r, cols]`: on AVX-512 a whole
/// span in tiles of 4 ranks × 64 columns ([`avx512::outer_tiles`]), the ranks left over (and
/// everything elsewhere) by [`outer_sum_part`], in the same order.
fn outer_sum_cols(part: &mut [f32], u: &[f32], r: usize, w: &[f32], n: usize, j0: usize) {
    let cols = part.len() / r;
    #[cfg(target_arch = "x86_64")]
    {
        if cols == SPAN && has_avx512() {
            let r4 = r / 4 * 4;
            // SAFETY: the CPU has AVX-512F; part is [r, SPAN], u is [m, r], w is [m, n] with
            // columns j0 .. j0 + SPAN ≤ n (checked by outer_sum).
            unsafe { avx512::outer_tiles(part, u, r, w, n, j0, r4) };
            outer_sum_part(part, u, r, w, n, j0, r4);
            return;
        }
    }
    outer_sum_part(part, u, r, w, n, j0, 0);
}

multiversion! {
    /// Ranks `k0 ..` of [`outer_sum_cols`], row by row of `u` and `w`.
    fn outer_sum_part(
        part: &mut [f32],
        u: &[f32],
        r: usize,
        w: &[f32],
        n: usize,
        j0: usize,
        k0: usize,
    ) {
        let cols = part.len() / r;
        for (urow, wrow) in u.chunks_exact(r).zip(w.chunks_exact(n)) {
            let ws = &wrow[j0..j0 + cols];
            for (&uk, prow) in urow[k0..].iter().zip(part[k0 * cols..].chunks_exact_mut(cols)) {
                for (p, &wv) in prow.iter_mut().zip(ws) {
                    *p = uk.mul_add(wv, *p);
                }
            }
        }
    }
}

/// Whether the register tiles run here (AVX-512F), else only the plain loops.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The register-tiled loops on AVX-512: 16 accumulators (4 × 4 vectors of 16) per tile.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps};
    use std::arch::x86_64::{_mm512_setzero_ps, _mm512_storeu_ps};

    /// Rows of `u` and `w` per block of [`outer_tiles`] (64 × 64 columns of `w`: 16 KiB).
    const ROW_BLOCK: usize = 64;

    /// Tiles of 4 rows × 64 columns of `out[t, :] (+)= Σ_k u[t, k] · v[k, :]`, rows `< m4`
    /// and columns `< n64` (multiples of 4 and 64).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out` is `[m, n]`, `u` `[m, r]`, `v` `[r, n]` with `m4 ≤ m`,
    /// `n64 ≤ n`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rank_r_tiles(
        out: &mut [f32],
        n: usize,
        u: &[f32],
        r: usize,
        v: &[f32],
        accumulate: bool,
        m4: usize,
        n64: usize,
    ) {
        let (o, up, vp) = (out.as_mut_ptr(), u.as_ptr(), v.as_ptr());
        for t0 in (0..m4).step_by(4) {
            for j0 in (0..n64).step_by(64) {
                let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                // SAFETY (all accesses): rows t0 .. t0 + 4 ≤ m4 ≤ m, columns j0 .. j0 + 64 ≤ n,
                // k < r: inside out, u and v (the caller's contract).
                unsafe {
                    if accumulate {
                        for (i, row) in acc.iter_mut().enumerate() {
                            for (c, a) in row.iter_mut().enumerate() {
                                *a = _mm512_loadu_ps(o.add((t0 + i) * n + j0 + 16 * c));
                            }
                        }
                    }
                    for k in 0..r {
                        let mut vv: [__m512; 4] = [_mm512_setzero_ps(); 4];
                        for (c, x) in vv.iter_mut().enumerate() {
                            *x = _mm512_loadu_ps(vp.add(k * n + j0 + 16 * c));
                        }
                        for (i, row) in acc.iter_mut().enumerate() {
                            let b = _mm512_set1_ps(*up.add((t0 + i) * r + k));
                            for (a, &x) in row.iter_mut().zip(&vv) {
                                *a = _mm512_fmadd_ps(b, x, *a);
                            }
                        }
                    }
                    for (i, row) in acc.iter().enumerate() {
                        for (c, &a) in row.iter().enumerate() {
                            _mm512_storeu_ps(o.add((t0 + i) * n + j0 + 16 * c), a);
                        }
                    }
                }
            }
        }
    }

    /// Ranks `< r4` (a multiple of 4) of a span of 64 columns `j0 ..` of
    /// `part[k, :] = Σ_t u[t, k] · w[t, j0 ..]`, in tiles of 4 ranks.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `part` is `[r, 64]`, `u` `[m, r]`, `w` `[m, n]` with
    /// `j0 + 64 ≤ n`, `r4 ≤ r`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outer_tiles(
        part: &mut [f32],
        u: &[f32],
        r: usize,
        w: &[f32],
        n: usize,
        j0: usize,
        r4: usize,
    ) {
        let m = u.len() / r;
        let (p, up, wp) = (part.as_mut_ptr(), u.as_ptr(), w.as_ptr());
        // Blocks of rows, each read from memory once and then from L1 by every group of
        // ranks (a whole stripe, one group at a time, came from L2/L3 in strided rows four
        // times); the sums carry over through `part`, still in the order of `t`.
        for t0 in (0..m).step_by(ROW_BLOCK) {
            let t1 = (t0 + ROW_BLOCK).min(m);
            for k0 in (0..r4).step_by(4) {
                let mut acc = [[_mm512_setzero_ps(); 4]; 4];
                // SAFETY (all accesses): t < m, columns j0 .. j0 + 64 ≤ n, ranks
                // k0 .. k0 + 4 ≤ r: inside u, w and part (the caller's contract).
                unsafe {
                    if t0 > 0 {
                        for (i, row) in acc.iter_mut().enumerate() {
                            for (c, a) in row.iter_mut().enumerate() {
                                *a = _mm512_loadu_ps(p.add((k0 + i) * 64 + 16 * c));
                            }
                        }
                    }
                    for t in t0..t1 {
                        let mut ww: [__m512; 4] = [_mm512_setzero_ps(); 4];
                        for (c, x) in ww.iter_mut().enumerate() {
                            *x = _mm512_loadu_ps(wp.add(t * n + j0 + 16 * c));
                        }
                        for (i, row) in acc.iter_mut().enumerate() {
                            let b = _mm512_set1_ps(*up.add(t * r + k0 + i));
                            for (a, &x) in row.iter_mut().zip(&ww) {
                                *a = _mm512_fmadd_ps(b, x, *a);
                            }
                        }
                    }
                    for (i, row) in acc.iter().enumerate() {
                        for (c, &a) in row.iter().enumerate() {
                            _mm512_storeu_ps(p.add((k0 + i) * 64 + 16 * c), a);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Shapes with every tail: widths below, at and past the vector groups, ranks off the tile.
    const SHAPES: [(usize, usize, usize); 6] = [
        (1, 1, 1),
        (3, 5, 17),
        (17, 16, 128),
        (40, 7, 200),
        (64, 16, 576),
        (33, 64, 1536),
    ];

    #[test]
    fn add_rank_r_is_the_product_plus_what_was_there() {
        for (m, r, n) in SHAPES {
            let (u, v, base) = (values(m * r, 1), values(r * n, 2), values(m * n, 3));
            for accumulate in [false, true] {
                let mut out = base.clone();
                add_rank_r(&mut out, n, &u, r, &v, accumulate);
                for t in 0..m {
                    for j in 0..n {
                        let start = if accumulate {
                            base[t * n + j] as f64
                        } else {
                            0.0
                        };
                        let want = (0..r)
                            .fold(start, |s, k| s + u[t * r + k] as f64 * v[k * n + j] as f64);
                        let got = out[t * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "[{m}, {r}, {n}] acc {accumulate} ({t}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn outer_sum_is_the_transposed_product() {
        for (m, r, n) in SHAPES {
            let (u, w) = (values(m * r, 4), values(m * n, 5));
            let mut out = vec![f32::NAN; r * n];
            outer_sum(&mut out, &u, r, &w, n);
            for k in 0..r {
                for j in 0..n {
                    let want =
                        (0..m).fold(0f64, |s, t| s + u[t * r + k] as f64 * w[t * n + j] as f64);
                    let got = out[k * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "[{m}, {r}, {n}] ({k}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_register_tiles_give_the_bits_of_the_plain_loops() {
        // On AVX-512 machines the bulk runs in register tiles; the plain loops are what every
        // other machine runs. Same terms, same order, same fused multiply-adds: same bits.
        eprintln!(
            "register tiles exercised: {} (AVX-512F on this machine)",
            has_avx512()
        );
        for (m, r, n) in SHAPES {
            let (u, v, base) = (values(m * r, 9), values(r * n, 10), values(m * n, 11));
            let mut tiled = base.clone();
            add_rank_r(&mut tiled, n, &u, r, &v, true);
            let mut plain = base.clone();
            rank_r_part(&mut plain, n, &u, r, &v, true, (0, m), (0, n));
            assert!(
                tiled
                    .iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "add_rank_r [{m}, {r}, {n}]"
            );
            let w = values(m * n, 12);
            let mut tiled = vec![0f32; r * n];
            outer_sum(&mut tiled, &u, r, &w, n);
            let mut plain = vec![0f32; r * n];
            for j0 in (0..n).step_by(SPAN) {
                let cols = SPAN.min(n - j0);
                let mut part = vec![0f32; r * cols];
                outer_sum_part(&mut part, &u, r, &w, n, j0, 0);
                for (k, row) in part.chunks_exact(cols).enumerate() {
                    plain[k * n + j0..][..cols].copy_from_slice(row);
                }
            }
            assert!(
                tiled
                    .iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "outer_sum [{m}, {r}, {n}]"
            );
        }
    }

    #[test]
    fn the_same_bits_whatever_the_threads() {
        let (m, r, n) = (300, 16, 576);
        let (u, w) = (values(m * r, 6), values(m * n, 7));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| {
                let mut a = vec![0f32; r * n];
                outer_sum(&mut a, &u, r, &w, n);
                let mut b = values(m * n, 8);
                add_rank_r(&mut b, n, &u, r, &a, true);
                (a, b)
            })
        };
        let (one, three) = (run(1), run(3));
        assert!(
            one.0
                .iter()
                .zip(&three.0)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert!(
            one.1
                .iter()
                .zip(&three.1)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
    }
}
