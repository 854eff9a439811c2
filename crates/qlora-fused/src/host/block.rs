//! Host kernels of [`crate::ops::BlockOps`]: RMSNorm, SwiGLU, GeGLU and RoPE, each forward and backward in
//! one pass over rows (rayon over chunks of rows), where the composed ops make one pass and
//! one fresh buffer per elementary op. Outputs are written without being zeroed first (a
//! `memset` of each, once freed memory is reused, was a few % of the training step).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::softmax_row::exp;
use super::wide::{dot3_16, dot16, multiversion};
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
        .for_each(|(ys, xs)| rms_norm_rows(ys, xs, w, eps));
    // SAFETY: `x.len()` is whole rows of `n`, and every row of `y` was written above.
    unsafe { y.set_len(x.len()) };
    y
}

multiversion! {
    /// Whole rows of [`rms_norm`] (`w.len()` wide).
    fn rms_norm_rows(ys: &mut [MaybeUninit<f32>], xs: &[f32], w: &[f32], eps: f32) {
        let n = w.len();
        for (yr, xr) in ys.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
            let r = inv_rms(xr, eps);
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                o.write(wv * (xv * r));
            }
        }
    }
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

#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss = dot16(x, x);
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
            rms_norm_backward_rows(dxs, &mut acc, xs, dys, w, eps);
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

multiversion! {
    /// Whole rows of [`rms_norm_backward`]: `dx` into `dxs`, each row's `dw` term added to `acc`.
    fn rms_norm_backward_rows(
        dxs: &mut [MaybeUninit<f32>],
        acc: &mut [f32],
        xs: &[f32],
        dys: &[f32],
        w: &[f32],
        eps: f32,
    ) {
        let n = w.len();
        for ((dxr, xr), dyr) in dxs
            .chunks_exact_mut(n)
            .zip(xs.chunks_exact(n))
            .zip(dys.chunks_exact(n))
        {
            let r = inv_rms(xr, eps);
            let c = dot3_16(xr, dyr, w) * r * r * r / n as f32;
            for ((((d, a), &xv), &dv), &wv) in dxr
                .iter_mut()
                .zip(acc.iter_mut())
                .zip(xr)
                .zip(dyr)
                .zip(w)
            {
                d.write(r * wv * dv - c * xv);
                *a += dv * xv * r;
            }
        }
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// A gated unit's activation: the forward `f(g, u)` and both partial derivatives times the
/// upstream gradient. Methods, always inlined, rather than closures: the loops below are
/// compiled per vector width ([`multiversion`]) with them inside.
trait Gate: Sync {
    const NAME: &'static str;
    fn forward(g: f32, u: f32) -> f32;
    /// `(dg, du)` for the upstream gradient `d`.
    fn backward(g: f32, u: f32, d: f32) -> (f32, f32);
}

/// SwiGLU's gate (Shazeer 2020): `silu(g) ∘ u`, `silu(g) = g · σ(g)`.
struct Silu;

impl Gate for Silu {
    const NAME: &'static str = "swiglu";
    #[inline(always)]
    fn forward(g: f32, u: f32) -> f32 {
        g * sigmoid(g) * u
    }
    #[inline(always)]
    fn backward(g: f32, u: f32, d: f32) -> (f32, f32) {
        let s = sigmoid(g);
        (d * u * s * (1.0 + g * (1.0 - s)), d * g * s)
    }
}

/// GeGLU's gate with GELU's tanh approximation (Gemma's MLP): `gelu_tanh(g) ∘ u`.
struct GeluTanh;

impl Gate for GeluTanh {
    const NAME: &'static str = "geglu_tanh";
    #[inline(always)]
    fn forward(g: f32, u: f32) -> f32 {
        gelu_tanh(g).0 * u
    }
    #[inline(always)]
    fn backward(g: f32, u: f32, d: f32) -> (f32, f32) {
        let (y, slope) = gelu_tanh(g);
        (d * u * slope, d * y)
    }
}

/// The forward pass of a gated unit, element by element in parallel chunks.
fn gated<G: Gate>(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "{}: gate and up lengths", G::NAME);
    let mut y = Vec::with_capacity(g.len());
    y.spare_capacity_mut()
        .par_chunks_mut(16_384)
        .zip(g.par_chunks(16_384).zip(u.par_chunks(16_384)))
        .for_each(|(ys, (gs, us))| gated_chunk::<G>(ys, gs, us));
    // SAFETY: the chunks of `y` pair with those of `g` (the same length): all written.
    unsafe { y.set_len(g.len()) };
    y
}

multiversion! {
    /// One chunk of [`gated`].
    fn gated_chunk<G: Gate>(ys: &mut [MaybeUninit<f32>], gs: &[f32], us: &[f32]) {
        for ((o, &gv), &uv) in ys.iter_mut().zip(gs).zip(us) {
            o.write(G::forward(gv, uv));
        }
    }
}

/// The backward pass of a gated unit, `(dg, du)`, element by element in parallel chunks.
fn gated_backward<G: Gate>(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(g.len(), u.len(), "{}: gate and up lengths", G::NAME);
    assert_eq!(g.len(), dy.len(), "{}: upstream gradient length", G::NAME);
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
        .for_each(|((dgs, dus), ((gs, us), dys))| gated_backward_chunk::<G>(dgs, dus, gs, us, dys));
    // SAFETY: the chunks pair with those of `g` (the same length): all written.
    unsafe {
        dg.set_len(n);
        du.set_len(n);
    }
    (dg, du)
}

multiversion! {
    /// One chunk of [`gated_backward`].
    fn gated_backward_chunk<G: Gate>(
        dgs: &mut [MaybeUninit<f32>],
        dus: &mut [MaybeUninit<f32>],
        gs: &[f32],
        us: &[f32],
        dys: &[f32],
    ) {
        let grads = dgs.iter_mut().zip(dus.iter_mut());
        for (((dg, du), (&gv, &uv)), &d) in grads.zip(gs.iter().zip(us)).zip(dys) {
            let (a, b) = G::backward(gv, uv, d);
            dg.write(a);
            du.write(b);
        }
    }
}

/// SwiGLU's gate (Shazeer 2020): `silu(g) ∘ u`, `silu(g) = g · σ(g)`.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    gated::<Silu>(g, u)
}

/// Gradients of [`swiglu`]: `dg = dy ∘ u ∘ σ(g)(1 + g(1 − σ(g)))`, `du = dy ∘ silu(g)`;
/// returns `(dg, du)`.
pub fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    gated_backward::<Silu>(g, u, dy)
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
    gated::<GeluTanh>(g, u)
}

/// Gradients of [`geglu_tanh`]: `dg = dy ∘ u ∘ gelu_tanh'(g)`, `du = dy ∘ gelu_tanh(g)`;
/// returns `(dg, du)`.
pub fn geglu_tanh_backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    gated_backward::<GeluTanh>(g, u, dy)
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
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()
        .par_chunks_mut(t * d)
        .zip(x.par_chunks(t * d))
        .for_each(|(ys, xs)| rope_block(ys, xs, cos, sin, d, transpose));
    // SAFETY: `x` is whole `[t, d]` blocks (asserted) whose rows were all written above.
    unsafe { y.set_len(x.len()) };
    y
}

multiversion! {
    /// One `[t, d]` block of [`rope`] (`w = cos.len() / t` rotated, `half = w / 2`).
    fn rope_block(
        ys: &mut [MaybeUninit<f32>],
        xs: &[f32],
        cos: &[f32],
        sin: &[f32],
        d: usize,
        transpose: bool,
    ) {
        let t = xs.len() / d;
        let w = cos.len() / t;
        let half = w / 2;
        for ((yr, xr), (c, s)) in ys
            .chunks_exact_mut(d)
            .zip(xs.chunks_exact(d))
            .zip(cos.chunks_exact(w).zip(sin.chunks_exact(w)))
        {
            for (o, &v) in yr[w..].iter_mut().zip(&xr[w..]) {
                o.write(v);
            }
            let (y1, y2) = yr[..w].split_at_mut(half);
            let (x1, x2) = xr[..w].split_at(half);
            let (c1, c2) = c.split_at(half);
            let (s1, s2) = s.split_at(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                if transpose {
                    y1[i].write(a * c1[i] + b * s2[i]);
                    y2[i].write(b * c2[i] - a * s1[i]);
                } else {
                    y1[i].write(a * c1[i] - b * s1[i]);
                    y2[i].write(b * c2[i] + a * s2[i]);
                }
            }
        }
    }
}
