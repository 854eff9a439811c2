//! The element-wise host kernels compiled for the widest vector unit the CPU has, chosen at run
//! time: the crate is built for the baseline x86-64 target (SSE2, no FMA), where LLVM
//! vectorises RMSNorm, SwiGLU/GeGLU, RoPE and the softmax's scaling 4 lanes wide; compiled
//! inside an AVX-512 function the same loops run 16 wide. In the default model's training step
//! those loops were about a tenth of the time at 4 lanes.
//!
//! Only the width changes, never the arithmetic: Rust does not contract `a * b + c` into a
//! fused multiply-add unless asked (`f32::mul_add`, exactly rounded on every tier, in software
//! where the CPU has no FMA), and every reduction goes through [`dot16`] /
//! [`dot3_16`], whose order of additions is written out (16 partial sums, then added in order),
//! so a kernel returns the same bits on every tier.

/// Defines `fn name(args) -> ret { body }` so that `body` runs compiled for AVX-512 (or AVX2)
/// when the CPU has it, else for the baseline target: the body is an `#[inline(always)]`
/// function called from one `#[target_feature]` wrapper per tier. What the body inlines is
/// generated at the wrapper's width; so bodies call `#[inline(always)]` helpers (as
/// [`dot16`], [`super::softmax_row::exp`]) and trait methods rather than closures, which the
/// compiler may keep out of line (at the baseline width) in another codegen unit.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident : $bound:path),+>)?
            ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU has AVX-512F (which implies AVX2 and FMA).
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512 $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
                    body $(::<$($g),+>)? ($($arg),*)
                }
                /// # Safety
                /// The CPU has AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2 $(<$($g: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
                    body $(::<$($g),+>)? ($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512 $(::<$($g),+>)? ($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2 $(::<$($g),+>)? ($($arg),*) };
                }
            }
            body $(::<$($g),+>)? ($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Partial sums per lane: the order [`dot16`] and [`dot3_16`] add in.
const LANES: usize = 16;

/// `Σ a[i] · b[i]` over the shorter length, as 16 partial sums (lane `j` takes `i ≡ j mod
/// 16`) added in order at the end: a sum LLVM can vectorise (a sequential `f32` sum cannot be
/// reordered), with the same bits at every vector width.
#[inline(always)]
pub(crate) fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (mut ac, mut bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ac).zip(&mut bc) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ac.remainder().iter().zip(bc.remainder()).enumerate() {
        acc[j] += x * y;
    }
    fold_lanes(&acc)
}

/// `Σ a[i] · b[i] · c[i]` in [`dot16`]'s order (`(a · b) · c` per element).
#[inline(always)]
pub(crate) fn dot3_16(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0f32; LANES];
    let (mut ac, mut bc, mut cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    for ((x, y), z) in (&mut ac).zip(&mut bc).zip(&mut cc) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j] * z[j];
        }
    }
    let tail = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .zip(cc.remainder());
    for (j, ((x, y), z)) in tail.enumerate() {
        acc[j] += x * y * z;
    }
    fold_lanes(&acc)
}

#[inline(always)]
fn fold_lanes(acc: &[f32; LANES]) -> f32 {
    let mut s = 0f32;
    for &v in acc {
        s += v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    multiversion! {
        fn wide_dot(x: &[f32], y: &[f32]) -> f32 {
            dot16(x, y)
        }
    }

    #[test]
    fn sums_in_the_written_order_on_every_tier() {
        let x: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919) % 613) as f32 * 1e-3 - 0.3)
            .collect();
        let y: Vec<f32> = (0..1001)
            .map(|i| ((i * 104_729) % 331) as f32 * 1e-2)
            .collect();
        for n in [0, 1, 15, 16, 17, 576, 1001] {
            // The order written out: lane j takes i ≡ j (mod 16), lanes added in order.
            let mut lanes = [0f32; LANES];
            for i in 0..n {
                lanes[i % LANES] += x[i] * y[i];
            }
            let want = lanes.iter().fold(0f32, |s, &v| s + v);
            let base = dot16(&x[..n], &y[..n]);
            let wide = wide_dot(&x[..n], &y[..n]);
            assert_eq!(base.to_bits(), want.to_bits(), "n = {n}");
            assert_eq!(wide.to_bits(), want.to_bits(), "n = {n}, widest tier");
            let exact: f64 = (0..n).map(|i| x[i] as f64 * y[i] as f64).sum();
            assert!(
                (base as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                "n = {n}"
            );
        }
    }
}
