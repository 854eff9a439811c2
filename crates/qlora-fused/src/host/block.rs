//! Host kernels of [`crate::ops::BlockOps`]: RMSNorm, SwiGLU, GeGLU and RoPE, each forward and backward in
//! one pass over rows (rayon over chunks of rows), where the composed ops make one pass and
//! one fresh buffer per elementary op. Outputs are written without being zeroed first (a
//! `memset` of each, once freed memory is reused, was a few % of the training step).

use rayon::prelude::*;

use super::softmax_row::exp;
use crate::ops::{GELU_BETA, GELU_KAPPA};

/// Rows per parallel task (enough work to amortise a task, enough tasks for every core).
fn rows_per_task(n: usize) -> usize {
    (16_384 / n.max(1)).max(1)
}

/// RMSNorm (Zhang & Sennrich 2019) as HF LLaMA computes it in f32:
/// `y = w ∘ (x · r)`, `r = 1 / √(mean(x²) + ε)`, row by row over the last dimension `n`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    whole_rows(x.len(), n, "rms_norm");
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(n * rows_per_task(n))
        .zip(x.par_chunks(n * rows_per_task(n)))
        .for_each(|(ys, xs)| {
            for (yr, xr) in ys.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
                let r = inv_rms(xr, eps);
                for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    o.write(wv * (xv * r));
                }
            }
        });
    // SAFETY: `x.len()` is whole rows of `n`, and every row of `y` was written above.
    unsafe { y.set_len(x.len()) };
    y
}

/// Checks that `len` values are whole rows of `n` (so that row loops write every output).
///
/// # Panics
/// If they are not, or `n` is 0.
fn whole_rows(len: usize, n: usize, what: &str) {
    assert!(
        n > 0 && len.is_multiple_of(n),
        "{what}: {len} values are not whole rows of {n}"
    );
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// Gradients of [`rms_norm`]: `dx = r · g − x · r³ · mean(x ∘ g)` with `g = w ∘ dy`, and
/// `dw = Σ_rows dy ∘ x · r`. Returns `(dx, dw)`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], dy: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = w.len();
    whole_rows(x.len(), n, "rms_norm_backward");
    assert_eq!(dy.len(), x.len(), "rms_norm_backward: gradient length");
    let chunk = n * rows_per_task(n);
    let mut dx = Vec::with_capacity(x.len());
    let mut dw = vec![0f32; n];
    // One partial weight gradient per fixed chunk of rows, summed in chunk order: the same
    // bits on every run, whatever the threads do.
    let partials: Vec<Vec<f32>> = dx
        .spare_capacity_mut()
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(dxs, (xs, dys))| {
            let mut acc = vec![0f32; n];
            for ((dxr, xr), dyr) in dxs
                .chunks_exact_mut(n)
                .zip(xs.chunks_exact(n))
                .zip(dys.chunks_exact(n))
            {
                let r = inv_rms(xr, eps);
                let dot: f32 = xr.iter().zip(dyr).zip(w).map(|((a, b), c)| a * b * c).sum();
                let c = dot * r * r * r / n as f32;
                for i in 0..n {
                    dxr[i].write(r * w[i] * dyr[i] - c * xr[i]);
                    acc[i] += dyr[i] * xr[i] * r;
                }
            }
            acc
        })
        .collect();
    // SAFETY: whole rows, every one written above.
    unsafe { dx.set_len(x.len()) };
    for p in &partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (dx, dw)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `f(g, u)` element by element, in parallel chunks: the forward pass of a gated unit.
fn gated(g: &[f32], u: &[f32], what: &str, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "{what}: gate and up lengths");
    let mut y = Vec::with_capacity(g.len());
    y.spare_capacity_mut()
        .par_chunks_mut(16_384)
        .zip(g.par_chunks(16_384).zip(u.par_chunks(16_384)))
        .for_each(|(ys, (gs, us))| {
            for ((o, &gv), &uv) in ys.iter_mut().zip(gs).zip(us) {
                o.write(f(gv, uv));
            }
        });
    // SAFETY: the chunks of `y` pair with those of `g` (the same length): all written.
    unsafe { y.set_len(g.len()) };
    y
}

/// `(dg, du) = f(g, u, dy)` element by element, in parallel chunks: the backward pass of a
/// gated unit.
fn gated_backward(
    g: &[f32],
    u: &[f32],
    dy: &[f32],
    what: &str,
    f: impl Fn(f32, f32, f32) -> (f32, f32) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(g.len(), u.len(), "{what}: gate and up lengths");
    assert_eq!(g.len(), dy.len(), "{what}: upstream gradient length");
    let n = g.len();
    let (mut dg, mut du) = (Vec::with_capacity(n), Vec::with_capacity(n));
    dg.spare_capacity_mut()
        .par_chunks_mut(16_384)
        .zip(du.spare_capacity_mut().par_chunks_mut(16_384))
        .zip(
            g.par_chunks(16_384)
                .zip(u.par_chunks(16_384))
                .zip(dy.par_chunks(16_384)),
        )
        .for_each(|((dgs, dus), ((gs, us), dys))| {
            for i in 0..gs.len() {
                let (a, b) = f(gs[i], us[i], dys[i]);
                dgs[i].write(a);
                dus[i].write(b);
            }
        });
    // SAFETY: the chunks pair with those of `g` (the same length): all written.
    unsafe {
        dg.set_len(n);
        du.set_len(n);
    }
    (dg, du)
}

/// SwiGLU's gate (Shazeer 2020): `silu(g) ∘ u`, `silu(g) = g · σ(g)`.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    gated(g, u, "swiglu", |gv, uv| gv * sigmoid(gv) * uv)
}

/// Gradients of [`swiglu`]: `dg = dy ∘ u ∘ σ(g)(1 + g(1 − σ(g)))`, `du = dy ∘ silu(g)`;
/// returns `(dg, du)`.
pub fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    gated_backward(g, u, dy, "swiglu", |gv, uv, d| {
        let s = sigmoid(gv);
        (d * uv * s * (1.0 + gv * (1.0 - s)), d * gv * s)
    })
}

/// `(gelu_tanh(g), gelu_tanh'(g))`, in f32 as PyTorch's `gelu(approximate="tanh")`:
/// `½ g (1 + t)` with `t = tanh(β (g + κ g³))`; the slope `½ (1 + t) + ½ g (1 − t²) β (1 + 3κ g²)`.
#[inline(always)]
fn gelu_tanh(g: f32) -> (f32, f32) {
    let t = (GELU_BETA * (g + GELU_KAPPA * g * g * g)).tanh();
    let y = 0.5 * g * (1.0 + t);
    let dy =
        0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * g * g);
    (y, dy)
}

/// GeGLU's gate with GELU's tanh approximation (Gemma's MLP): `gelu_tanh(g) ∘ u`.
pub fn geglu_tanh(g: &[f32], u: &[f32]) -> Vec<f32> {
    gated(g, u, "geglu_tanh", |gv, uv| gelu_tanh(gv).0 * uv)
}

/// Gradients of [`geglu_tanh`]: `dg = dy ∘ u ∘ gelu_tanh'(g)`, `du = dy ∘ gelu_tanh(g)`;
/// returns `(dg, du)`.
pub fn geglu_tanh_backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    gated_backward(g, u, dy, "geglu_tanh", |gv, uv, d| {
        let (y, slope) = gelu_tanh(gv);
        (d * uv * slope, d * y)
    })
}

/// Rotary embedding in HF LLaMA's `rotate_half` form on the leading `w` of rows of width `d`
/// (`x` `[.., t, d]`, row `i` at position `i % t`): `y = x ∘ cos + [−x₂, x₁] ∘ sin` with tables
/// `[t, w]`, the trailing `d − w` values passed through (a partial rotary factor, Phi-3). With
/// `transpose`, the adjoint: `dx = dy ∘ cos + [(dy ∘ sin)₂, −(dy ∘ sin)₁]`.
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], d: usize, w: usize, transpose: bool) -> Vec<f32> {
    assert!(
        w.is_multiple_of(2) && w > 0 && w <= d,
        "rope: a rotated width {w} that is odd, 0 or above the head width {d}"
    );
    assert_eq!(
        cos.len(),
        sin.len(),
        "rope: cos and sin tables differ in length"
    );
    let t = cos.len() / w;
    assert_eq!(
        x.len() % (t * d),
        0,
        "rope: the input is not a whole number of [{t}, {d}] blocks"
    );
    let half = w / 2;
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(t * d)
        .zip(x.par_chunks(t * d))
        .for_each(|(ys, xs)| {
            for ((yr, xr), (c, s)) in ys
                .chunks_exact_mut(d)
                .zip(xs.chunks_exact(d))
                .zip(cos.chunks_exact(w).zip(sin.chunks_exact(w)))
            {
                for (o, &v) in yr[w..].iter_mut().zip(&xr[w..]) {
                    o.write(v);
                }
                for i in 0..half {
                    let (a, b) = (xr[i], xr[i + half]);
                    if transpose {
                        yr[i].write(a * c[i] + b * s[i + half]);
                        yr[i + half].write(b * c[i + half] - a * s[i]);
                    } else {
                        yr[i].write(a * c[i] - b * s[i]);
                        yr[i + half].write(b * c[i + half] + a * s[i + half]);
                    }
                }
            }
        });
    // SAFETY: `x` is whole `[t, d]` blocks (asserted) whose rows were all written above.
    unsafe { y.set_len(x.len()) };
    y
}
