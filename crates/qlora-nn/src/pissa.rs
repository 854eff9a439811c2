//! PiSSA initialisation (Meng, Wang and Zhang 2024, "PiSSA: Principal Singular Values and
//! Singular Vectors Adaptation of Large Language Models"): the adapter starts as the weight's
//! top-`r` singular triplets and the base keeps the rest, so that training moves the principal
//! components instead of a zero update, and a quantized base holds only the residual, whose
//! smaller outliers quantize with less error.
//!
//! As PEFT 0.21's `pissa_init` computes it, with `W = V·S·Uᴴ` (`[out, in]`, singular values
//! falling) and `S_r = S[..r] / scaling`:
//! `A = diag(√S_r)·Uᴴ[..r]` (`[r, in]`), `B = V[:, ..r]·diag(√S_r)` (`[out, r]`) and the residual
//! `W − scaling·B·A`, so that `residual + scaling·B·A = W` and the model is unchanged at the
//! start. `pissa` takes the full SVD; `pissa_niter_K` the randomized one of Halko, Martinsson
//! and Tropp (2011) with `K` power iterations (`torch.svd_lowrank(W, q = r, niter = K)`), for
//! large layers, where the full SVD costs minutes.
//!
//! The SVDs are [`crate::svd`]'s: f64, one thread, the same bits for every thread count, so that
//! a resumed run and a reloaded adapter rebuild the residual they were trained on. The
//! randomized start is drawn from a generator seeded by the layer's path, not torch's, so it
//! matches PEFT's in quality, not in bits.

use faer::Mat;

use crate::svd::{TopSingular, top_singular};

/// The adapter and the residual base PiSSA makes of one weight (row-major, PEFT's layouts).
#[derive(Debug, Clone)]
pub struct PissaInit {
    /// `lora_A` `[r, in]`.
    pub lora_a: Vec<f32>,
    /// `lora_B` `[out, r]`.
    pub lora_b: Vec<f32>,
    /// The residual base weight `[out, in]`.
    pub residual: Vec<f32>,
}

/// PiSSA of `weight` (`[out, in]`, row-major) at rank `r`: the full SVD when `niter` is `None`,
/// else the randomized one with that many power iterations (its random start drawn from
/// `seed`).
///
/// # Errors
/// A rank above `min(out, in)` (the weight has no more singular vectors), or an SVD that does
/// not converge (a weight with NaN or infinite values).
pub fn pissa(
    weight: &[f32],
    [out, inp]: [usize; 2],
    r: usize,
    scaling: f64,
    niter: Option<usize>,
    seed: u64,
) -> Result<PissaInit, String> {
    assert_eq!(weight.len(), out * inp, "weight is not [out, in]");
    if r == 0 || r > out.min(inp) {
        return Err(format!(
            "PiSSA needs 1 ≤ r ≤ min(out, in) = {}: r is {r}",
            out.min(inp)
        ));
    }
    if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "PiSSA needs a finite weight: element {i} is {}",
            weight[i]
        ));
    }
    // √(σ/s): a zero or negative scaling (lora_alpha ≤ 0) would give NaN or infinite adapters.
    if !(scaling > 0.0 && scaling.is_finite()) {
        return Err(format!(
            "PiSSA needs a positive scaling (lora_alpha > 0): it is {scaling}"
        ));
    }
    let w = Mat::<f64>::from_fn(out, inp, |i, j| weight[i * inp + j] as f64);
    let TopSingular {
        left,
        values,
        right,
    } = top_singular(&w, r, niter, seed)?;
    let roots: Vec<f64> = values.iter().map(|s| (s / scaling).sqrt()).collect();
    let lora_a: Vec<f32> = (0..r * inp)
        .map(|k| (roots[k / inp] * right[(k % inp, k / inp)]) as f32)
        .collect();
    let lora_b: Vec<f32> = (0..out * r)
        .map(|k| (left[(k / r, k % r)] * roots[k % r]) as f32)
        .collect();
    // From the rounded A and B, as PEFT subtracts its float32 product: the residual and the
    // adapter then sum to the weight as exactly as f32 allows.
    let a = Mat::<f64>::from_fn(r, inp, |i, j| lora_a[i * inp + j] as f64);
    let b = Mat::<f64>::from_fn(out, r, |i, j| lora_b[i * r + j] as f64);
    let ba = &b * &a;
    let residual = (0..out * inp)
        .map(|k| (w[(k / inp, k % inp)] - scaling * ba[(k / inp, k % inp)]) as f32)
        .collect();
    Ok(PissaInit {
        lora_a,
        lora_b,
        residual,
    })
}

/// A seed from a layer's path (FNV-1a), so that each layer draws its own start, the same in
/// every run.
pub fn path_seed(path: &str) -> u64 {
    crate::param_ids::fnv1a(path)
}
