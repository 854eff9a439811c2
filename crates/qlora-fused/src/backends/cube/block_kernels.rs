//! CubeCL kernels of the block ops: RMSNorm (a cube per row, its sums reduced in shared memory;
//! the weight's gradient a unit per column over chunks of rows, the chunks then summed), SwiGLU and GeGLU (a unit per
//! element), and the rotary embedding (a unit per element, reading its partner half).
//! Everything is computed in f32 and stored in the tensors' float type.

use cubecl::prelude::*;

/// Units per cube (a power of two).
pub(crate) const UNITS: usize = 256;

const LOG2_UNITS: usize = UNITS.trailing_zeros() as usize;

/// The cube's index over a grid folded into two dimensions (one holds 65,535 cubes at most).
#[cube]
fn cube_index() -> usize {
    CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize
}

/// The sum of every unit's `value`, in every unit (a tree in shared memory).
#[cube]
fn cube_sum(value: f32, red: &mut Shared<[f32]>) -> f32 {
    let u = UNIT_POS_X as usize;
    red[u] = value;
    sync_cube();
    for level in 0..LOG2_UNITS {
        let s = (UNITS / 2) >> level;
        if u < s {
            let v = red[u] + red[u + s];
            red[u] = v;
        }
        sync_cube();
    }
    let total = red[0];
    sync_cube();
    total
}

/// `y = w ∘ x / √(mean(x²) + ε)`, a cube per row of `n`.
#[cube(launch)]
pub(crate) fn rms_norm_kernel<F: Float>(
    x: &[F],
    w: &[F],
    y: &mut [F],
    rows: usize,
    n: usize,
    eps: f32,
    #[define(F)] _dtype: ElemType,
) {
    let row = cube_index();
    let u = UNIT_POS_X as usize;
    let mut red = Shared::<[f32]>::new_slice(UNITS);
    let mut sq = 0.0f32;
    if row < rows {
        for it in 0..n.div_ceil(UNITS) {
            let c = u + it * UNITS;
            if c < n {
                let v = f32::cast_from(x[row * n + c]);
                sq += v * v;
            }
        }
    }
    let total = cube_sum(sq, &mut red);
    if row < rows {
        let r = 1.0f32 / (total / f32::cast_from(n) + eps).sqrt();
        for it in 0..n.div_ceil(UNITS) {
            let c = u + it * UNITS;
            if c < n {
                let v = f32::cast_from(x[row * n + c]) * r * f32::cast_from(w[c]);
                y[row * n + c] = F::cast_from(v);
            }
        }
    }
}

/// RMSNorm's input gradient `dx = r·g − r³·mean(x ∘ g)·x` with `g = dy ∘ w`, a cube per row,
/// and each row's `r = 1 / √(mean(x²) + ε)` written to `inv` for the weight's gradient.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_backward_kernel<F: Float>(
    x: &[F],
    w: &[F],
    dy: &[F],
    dx: &mut [F],
    inv: &mut [f32],
    rows: usize,
    n: usize,
    eps: f32,
    #[define(F)] _dtype: ElemType,
) {
    let row = cube_index();
    let u = UNIT_POS_X as usize;
    let mut red = Shared::<[f32]>::new_slice(UNITS);
    let mut sq = 0.0f32;
    let mut xg = 0.0f32;
    if row < rows {
        for it in 0..n.div_ceil(UNITS) {
            let c = u + it * UNITS;
            if c < n {
                let v = f32::cast_from(x[row * n + c]);
                sq += v * v;
                xg += v * f32::cast_from(dy[row * n + c]) * f32::cast_from(w[c]);
            }
        }
    }
    let sum_sq = cube_sum(sq, &mut red);
    let sum_xg = cube_sum(xg, &mut red);
    if row < rows {
        let nf = f32::cast_from(n);
        let r = 1.0f32 / (sum_sq / nf + eps).sqrt();
        let k = r * r * r * sum_xg / nf;
        for it in 0..n.div_ceil(UNITS) {
            let c = u + it * UNITS;
            if c < n {
                let g = f32::cast_from(dy[row * n + c]) * f32::cast_from(w[c]);
                let v = g * r - f32::cast_from(x[row * n + c]) * k;
                dx[row * n + c] = F::cast_from(v);
            }
        }
        if u == 0 {
            inv[row] = r;
        }
    }
}

/// RMSNorm's weight gradient in parts: `partial[k, c] = Σ_rows dy ∘ x · r` over the `k`-th
/// chunk of `chunk` rows, a unit per column; the host sums the parts (Burn's `sum_dim`).
/// Cubes: `(column blocks of UNITS, chunks)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_weight_grad_kernel<F: Float>(
    x: &[F],
    dy: &[F],
    inv: &[f32],
    partial: &mut [f32],
    rows: usize,
    n: usize,
    chunk: usize,
    #[define(F)] _dtype: ElemType,
) {
    let c = CUBE_POS_X as usize * UNITS + UNIT_POS_X as usize;
    let k = CUBE_POS_Y as usize;
    if c < n {
        let first = k * chunk;
        let mut end = first + chunk;
        if end > rows {
            end = rows;
        }
        let mut acc = 0.0f32;
        for row in first..end {
            acc += f32::cast_from(dy[row * n + c]) * f32::cast_from(x[row * n + c]) * inv[row];
        }
        partial[k * n + c] = acc;
    }
}

/// `(gelu_tanh(g), gelu_tanh'(g))`'s two parts in one: `gelu` where `!derivative`, else its
/// derivative `½ (1 + t) + ½ g (1 − t²) β (1 + 3κ g²)`, `t = tanh(β (g + κ g³))`.
#[cube]
fn gelu_tanh(g: f32, beta: f32, kappa: f32, #[comptime] derivative: bool) -> f32 {
    let t = (beta * (g + kappa * g * g * g)).tanh();
    let mut out = 0.5f32 * g * (1.0f32 + t);
    if derivative {
        out = 0.5f32 * (1.0f32 + t)
            + 0.5f32 * g * (1.0f32 - t * t) * beta * (1.0f32 + 3.0f32 * kappa * g * g);
    }
    out
}

/// The gated activation `act(gate) ∘ up`, `act` SiLU or (with `gelu`) GELU's tanh form.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn glu_kernel<F: Float>(
    gate: &[F],
    up: &[F],
    y: &mut [F],
    len: usize,
    beta: f32,
    kappa: f32,
    #[comptime] gelu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let e = cube_index() * UNITS + UNIT_POS_X as usize;
    if e < len {
        let g = f32::cast_from(gate[e]);
        let mut a = g / (1.0f32 + (-g).exp());
        if gelu {
            a = gelu_tanh(g, beta, kappa, false);
        }
        y[e] = F::cast_from(a * f32::cast_from(up[e]));
    }
}

/// `(dgate, dup) = (dy ∘ up ∘ act'(gate), dy ∘ act(gate))` of [`glu_kernel`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn glu_backward_kernel<F: Float>(
    gate: &[F],
    up: &[F],
    dy: &[F],
    dgate: &mut [F],
    dup: &mut [F],
    len: usize,
    beta: f32,
    kappa: f32,
    #[comptime] gelu: bool,
    #[define(F)] _dtype: ElemType,
) {
    let e = cube_index() * UNITS + UNIT_POS_X as usize;
    if e < len {
        let g = f32::cast_from(gate[e]);
        let d = f32::cast_from(dy[e]);
        // SiLU: σ(g) + silu(g)(1 − σ(g)).
        let s = 1.0f32 / (1.0f32 + (-g).exp());
        let mut a = g * s;
        let mut da = s + a * (1.0f32 - s);
        if gelu {
            a = gelu_tanh(g, beta, kappa, false);
            da = gelu_tanh(g, beta, kappa, true);
        }
        dgate[e] = F::cast_from(d * f32::cast_from(up[e]) * da);
        dup[e] = F::cast_from(d * a);
    }
}

/// The rotary embedding of `x` `[b, h, t, d]` by tables `[t, w]` on each head's leading `w`
/// (the rest copied), or with `transpose` its adjoint (see `BlockOps::rope`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_kernel<F: Float>(
    x: &[F],
    cos: &[F],
    sin: &[F],
    y: &mut [F],
    len: usize,
    t: usize,
    d: usize,
    w: usize,
    #[comptime] transpose: bool,
    #[define(F)] _dtype: ElemType,
) {
    let e = cube_index() * UNITS + UNIT_POS_X as usize;
    if e < len {
        let c = e % d;
        let pos = (e / d) % t;
        let xv = f32::cast_from(x[e]);
        let mut out = xv;
        if c < w {
            let half = w / 2;
            let at = pos * w;
            out = xv * f32::cast_from(cos[at + c]);
            if c < half {
                let partner = f32::cast_from(x[e + half]);
                if transpose {
                    out += partner * f32::cast_from(sin[at + c + half]);
                } else {
                    out -= partner * f32::cast_from(sin[at + c]);
                }
            } else {
                let partner = f32::cast_from(x[e - half]);
                if transpose {
                    out -= partner * f32::cast_from(sin[at + c - half]);
                } else {
                    out += partner * f32::cast_from(sin[at + c]);
                }
            }
        }
        y[e] = F::cast_from(out);
    }
}
