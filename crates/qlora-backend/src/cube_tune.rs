//! Which kernel computes an NF4 matmul on a CubeCL device, chosen by measuring: the first call
//! of a shape class times every candidate on that device and keeps the fastest (CubeCL's own
//! autotune does the same for Burn's matmul); later calls of the class reuse the choice.
//!
//! The candidates (`qlora-kernels`): the decode GEMV (forward, `m ≤ GEMV_MAX_M`), the
//! register-blocked 64 × 64 kernel, the 16 × 16 kernel, and the whole weight dequantized then
//! the backend's own (autotuned, tensor-core where there are some) matmul. All compute the same
//! product in f32 accumulation; they differ only by rounding order.
//!
//! `QLORA_NF4_KERNEL=gemv|tiled|simple|dequant` forces one (where it applies), for benchmarks
//! and tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A way to compute the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nf4Kernel {
    /// One pass over the packed weight, a cube per output row (forward, few rows).
    Gemv,
    /// The register-blocked 64 × 64 dequantize-matmul.
    Tiled,
    /// The 16 × 16 dequantize-matmul.
    Simple,
    /// Dequantize the whole weight, then the backend's matmul.
    DequantMatmul,
}

impl Nf4Kernel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gemv" => Self::Gemv,
            "tiled" => Self::Tiled,
            "simple" => Self::Simple,
            "dequant" => Self::DequantMatmul,
            _ => return None,
        })
    }
}

/// A shape class: `m` rounded up to a power of two (exact up to 8), the weight's shape, the
/// direction, the element type and the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TuneKey {
    pub m_class: usize,
    pub n: usize,
    pub k: usize,
    pub transposed: bool,
    pub dtype: String,
    pub device: String,
}

impl TuneKey {
    pub(crate) fn m_class(m: usize) -> usize {
        if m <= 8 { m } else { m.next_power_of_two() }
    }
}

static CHOICES: Mutex<Option<HashMap<TuneKey, Nf4Kernel>>> = Mutex::new(None);

static FORCED: Mutex<Option<Nf4Kernel>> = Mutex::new(None);

/// Makes every NF4 matmul on a CubeCL device use `kernel` where it applies (`None`: measure
/// and choose, the default). For benchmarks; `QLORA_NF4_KERNEL` does the same from outside.
pub fn force_nf4_kernel(kernel: Option<Nf4Kernel>) {
    *FORCED.lock().unwrap_or_else(|e| e.into_inner()) = kernel;
}

/// The kernels that apply to a product of `m` rows.
pub(crate) fn candidates(m: usize, transposed: bool) -> Vec<Nf4Kernel> {
    let mut c = Vec::new();
    if !transposed && m <= qlora_kernels::GEMV_MAX_M {
        c.push(Nf4Kernel::Gemv);
    }
    c.extend([
        Nf4Kernel::Tiled,
        Nf4Kernel::Simple,
        Nf4Kernel::DequantMatmul,
    ]);
    c
}

/// The kernel for `key`: forced by `QLORA_NF4_KERNEL`, known, or measured now by running
/// `run(kernel)` (which must finish its work on the device before returning) for each of
/// `cands`: once to compile, once timed.
pub(crate) fn choose(
    key: TuneKey,
    cands: &[Nf4Kernel],
    mut run: impl FnMut(Nf4Kernel),
) -> Nf4Kernel {
    let set = *FORCED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(forced) = set
        .or_else(|| {
            std::env::var("QLORA_NF4_KERNEL")
                .ok()
                .and_then(|s| Nf4Kernel::parse(&s))
        })
        .filter(|k| cands.contains(k))
    {
        return forced;
    }
    if let Some(k) = CHOICES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return *k;
    }
    let mut best = (cands[0], f64::INFINITY);
    for &c in cands {
        run(c);
        let t = Instant::now();
        run(c);
        let s = t.elapsed().as_secs_f64();
        if s < best.1 {
            best = (c, s);
        }
    }
    CHOICES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, best.0);
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_candidates() {
        assert_eq!(TuneKey::m_class(3), 3);
        assert_eq!(TuneKey::m_class(9), 16);
        assert_eq!(TuneKey::m_class(512), 512);
        assert_eq!(candidates(1, false)[0], Nf4Kernel::Gemv);
        assert!(!candidates(1, true).contains(&Nf4Kernel::Gemv));
        assert!(!candidates(9, false).contains(&Nf4Kernel::Gemv));
    }

    #[test]
    fn the_fastest_is_kept() {
        let key = TuneKey {
            m_class: 4,
            n: 1,
            k: 1,
            transposed: true,
            dtype: "test".into(),
            device: "test".into(),
        };
        let cands = [Nf4Kernel::Tiled, Nf4Kernel::Simple];
        let mut calls = 0;
        let slow = |k: Nf4Kernel| {
            if k == Nf4Kernel::Tiled {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        let got = choose(key.clone(), &cands, |k| {
            calls += 1;
            slow(k)
        });
        if std::env::var("QLORA_NF4_KERNEL").is_err() {
            assert_eq!(got, Nf4Kernel::Simple);
            assert_eq!(calls, 4);
            // Known now: nothing runs.
            assert_eq!(choose(key, &cands, |_| panic!("measured twice")), got);
        }
    }
}
