//! Which tier is fastest on this machine, measured rather than assumed.
//!
//! AMX is 3× an f32 GEMM on the Xeons measured here; this crate's AVX512-BF16 kernel is
//! slower than f32 on those same cores (`VDPBF16PS` issues on one port where FMA has two),
//! and on AVX-512 cores that split 512-bit work (AMD Zen 4) the balance differs again.
//! [`fastest_tier`] times one product of a training shape, packing included, per tier. Timing
//! is noisy on a loaded machine, so a program that must compute the same way in every run (a
//! trainer and its resume) should pick by rule (as `finetune --compute-dtype auto` does) or
//! record the choice.

use std::sync::OnceLock;
use std::time::Instant;

use crate::{PackedA, PackedB, Tier, gemm_bf16};

/// A bf16 tier must beat f32 by this factor to be chosen (timer noise, packing variance).
const MARGIN: f64 = 1.1;

/// The fastest available tier for a `[256, 576] · [576, 1536]` product (an MLP projection of
/// a small model at 256 tokens), packing included; measured once per process (tens of ms).
pub fn fastest_tier() -> Tier {
    static FASTEST: OnceLock<Tier> = OnceLock::new();
    *FASTEST.get_or_init(|| {
        let (m, n, k) = (256, 1536, 576);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 89) as f32 / 89.0 - 0.5).collect();
        let mut out = vec![0f32; m * n];
        let f32_time = best_of(3, || gemm_f32(&a, &b, &mut out, (m, n, k)));
        let mut best = (Tier::F32, f32_time);
        for tier in Tier::BF16 {
            if !tier.available() {
                continue;
            }
            let t = best_of(3, || {
                let pa = PackedA::from_f32(&a, m, k, k);
                let pb = PackedB::from_f32(&b, k, n, n, 1);
                gemm_bf16(tier, &pa, &pb, &mut out, n, false);
            });
            if t * MARGIN < best.1 {
                best = (tier, t);
            }
        }
        best.0
    })
}

/// `out[m, n] = a[m, k] · b[k, n]`, all row-major, in f32 on every core: the product the bf16
/// tiers are measured against (the `gemm` crate, as Burn Flex and the NF4 host kernels run it).
///
/// # Panics
/// If a slice is shorter than its extents.
pub fn gemm_f32(a: &[f32], b: &[f32], out: &mut [f32], (m, n, k): (usize, usize, usize)) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && out.len() >= m * n,
        "gemm_f32: operands shorter than their extents"
    );
    // SAFETY: the slices hold their extents (asserted), row-major, and `out` is exclusive.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

/// The best of `reps` timings of `f`, after one warm-up call.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
