//! Which kernel computes an NF4 matmul on a CubeCL device, chosen by measuring with CubeCL's own
//! autotuner, the one burn-cubecl tunes its matmul and reductions with (`LocalTuner` +
//! `TunableSet`): the first call of a shape class on a device benchmarks every candidate that
//! applies (a warmup, then 3 to 10 samples timed on the device while the tuner holds it, the
//! slow ones dropped early) and keeps the fastest; later calls of the class run it straight
//! away. Its table is per device ([`CubeTuneId`]) and keyed by a hashable struct
//! ([`Nf4TuneKey`]): a forward call formats no string and reads no environment variable. Where
//! CubeCL's persistent cache is compiled in (feature `persistence`), a choice outlives the
//! process like Burn's own, under `target/environment` of the workspace.
//! `CUBECL_AUTOTUNE_CACHE=0` turns that cache off, `CUBECL_DEBUG_LOG=stderr` shows the tuning.
//!
//! The candidates (`qlora-kernels`): the decode GEMV (forward, `m ≤ GEMV_MAX_M`; a tunable of
//! negative priority for any other key, so it is never measured there), the register-blocked
//! 64 × 64 kernel, the 16 × 16 kernel, and the whole weight dequantized then the backend's own
//! (autotuned, tensor-core where there are some) matmul. All compute the same product in f32
//! accumulation; they differ only by rounding order.
//!
//! [`force_nf4_kernel`] or `QLORA_NF4_KERNEL=gemv|tiled|simple|dequant` forces one (where it
//! applies), for benchmarks and tests: it then runs directly, nothing is measured. The variable
//! is read once, on the first NF4 matmul of the process.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::DType;
// `cubecl` itself is in scope for `#[derive(AutotuneKey)]`, whose expansion names
// `cubecl::tune::AutotuneKey` and `cubecl::tune::anchor` (cubecl-macros-0.11.3/src/paths.rs:6,20).
use burn_cubecl::{
    CubeTuneId,
    cubecl::{
        self, AutotuneKey,
        tune::{LocalTuner, Tunable, TunableSet, TuneGroup, local_tuner},
    },
    tensor::CubeTensor,
};
use serde::{Deserialize, Serialize};

use crate::cube::{Nf4Inputs, run_kernel};

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
    /// Every kernel, in the order the tuner lists them (its first is its fallback).
    const ALL: [Self; 4] = [Self::Gemv, Self::Tiled, Self::Simple, Self::DequantMatmul];

    /// The `QLORA_NF4_KERNEL` spelling, also the tunable's name in CubeCL's logs and cache.
    fn name(self) -> &'static str {
        match self {
            Self::Gemv => "gemv",
            Self::Tiled => "tiled",
            Self::Simple => "simple",
            Self::DequantMatmul => "dequant",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the kernel computes a product of `m` rows in this direction: the GEMV only the
    /// forward one of at most `GEMV_MAX_M` rows (it asserts so), the others every product.
    pub(crate) fn applies(self, m: usize, transposed: bool) -> bool {
        self != Self::Gemv || (!transposed && m <= qlora_kernels::GEMV_MAX_M)
    }
}

impl fmt::Display for Nf4Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `0`: nothing forced by [`force_nf4_kernel`]; `1 + i`: `Nf4Kernel::ALL[i]`. An atomic, so the
/// forward path takes no lock to read it.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// `QLORA_NF4_KERNEL`, read once: `std::env::var` takes the process's environment lock and
/// allocates, which a per-call read would do on every forward.
static FROM_ENV: OnceLock<Option<Nf4Kernel>> = OnceLock::new();

fn encode(kernel: Option<Nf4Kernel>) -> u8 {
    kernel.map_or(0, |k| k as u8 + 1)
}

fn decode(code: u8) -> Option<Nf4Kernel> {
    code.checked_sub(1).map(|i| Nf4Kernel::ALL[i as usize])
}

/// Makes every NF4 matmul on a CubeCL device use `kernel` where it applies (`None`: measure
/// and choose, the default). For benchmarks; `QLORA_NF4_KERNEL` does the same from outside.
pub fn force_nf4_kernel(kernel: Option<Nf4Kernel>) {
    FORCED.store(encode(kernel), Ordering::Relaxed);
}

/// The kernel forced by [`force_nf4_kernel`], else by `QLORA_NF4_KERNEL`, if any.
fn forced() -> Option<Nf4Kernel> {
    decode(FORCED.load(Ordering::Relaxed)).or_else(|| {
        *FROM_ENV.get_or_init(|| {
            std::env::var("QLORA_NF4_KERNEL")
                .ok()
                .and_then(|s| Nf4Kernel::parse(&s))
        })
    })
}

/// Rows up to this many are a class of their own (decode shapes differ row by row, and the
/// GEMV's limit must fall on a class edge so one answer holds for the whole class).
const EXACT_M: usize = if qlora_kernels::GEMV_MAX_M > 8 {
    qlora_kernels::GEMV_MAX_M
} else {
    8
};

/// `m` exact up to [`EXACT_M`], else rounded up to a power of two.
pub(crate) fn m_class(m: usize) -> usize {
    if m <= EXACT_M {
        m
    } else {
        m.next_power_of_two()
    }
}

/// A shape class: `m` classed by [`m_class`], the weight's shape, the direction and the element
/// type. The device is the tuner's id ([`CubeTuneId`]), not part of the key.
///
/// `m` is classed by hand rather than `#[autotune(anchor)]`: the anchor's base follows
/// `CUBECL_AUTOTUNE_LEVEL` (1.25 × 2 at `minimal`, cubecl-runtime `tune/util.rs`), which could
/// put `m = 7` and `m = 16` in one class and the GEMV's limit inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, AutotuneKey)]
pub(crate) struct Nf4TuneKey {
    #[autotune(name = "M class")]
    m_class: usize,
    n: usize,
    k: usize,
    transposed: bool,
    dtype: DType,
}

/// The tuner's key of a call (the `new` is the derive's).
fn nf4_key(inputs: &Nf4Inputs) -> Nf4TuneKey {
    Nf4TuneKey::new(
        m_class(inputs.m),
        inputs.n_out,
        inputs.k_red,
        inputs.transposed,
        inputs.lhs.dtype,
    )
}

/// The benchmark runs' inputs: the call's own, shared (every kernel writes a fresh output,
/// nothing else is written).
fn nf4_bench_inputs(_key: &Nf4TuneKey, inputs: &Nf4Inputs) -> Nf4Inputs {
    inputs.clone()
}

/// A kernel's priority for `key`: every one that applies is in the one round (priority `0`),
/// one that does not is skipped (negative: `Tunable::group` in cubecl-runtime `tune/base.rs`).
fn priority(kernel: Nf4Kernel, key: &Nf4TuneKey) -> i8 {
    if kernel.applies(key.m_class, key.transposed) {
        0
    } else {
        -1
    }
}

/// The candidates, one tunable per kernel, identified by it. A kernel that does not apply also
/// declines the call (an error, not the GEMV's assert): CubeCL's `autotune-checks` feature runs
/// every tunable of the set on every key, whatever its priority.
fn nf4_tunables() -> TunableSet<Nf4TuneKey, Nf4Inputs, CubeTensor, Nf4Kernel> {
    let all = TuneGroup::<Nf4TuneKey>::new("nf4", |_key| 0);
    let mut set = TunableSet::new(nf4_key, nf4_bench_inputs);
    for kernel in Nf4Kernel::ALL {
        set = set.with(
            Tunable::identified(kernel, move |inputs: Nf4Inputs| {
                if !kernel.applies(inputs.m, inputs.transposed) {
                    return Err("the kernel does not apply to this product");
                }
                Ok(run_kernel(kernel, &inputs))
            })
            .group(&all, move |key: &Nf4TuneKey| priority(kernel, key)),
        );
    }
    set
}

/// The tuner (one table per device, built on first use).
static TUNER: LocalTuner<Nf4TuneKey, CubeTuneId> = local_tuner!("nf4-matmul");

/// The product of `inputs` by the forced kernel, else by the fastest for its class on its device
/// (measured now if the class is new there).
pub(crate) fn nf4_matmul(inputs: Nf4Inputs) -> CubeTensor {
    if let Some(kernel) = forced().filter(|k| k.applies(inputs.m, inputs.transposed)) {
        return run_kernel(kernel, &inputs);
    }
    let client = inputs.lhs.client.clone();
    let id = CubeTuneId::new(&client, &inputs.lhs.device);
    let tunables = TUNER.init(&id, nf4_tunables);
    TUNER.execute(&id, &client, tunables, inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(m_class(3), 3);
        assert_eq!(m_class(8), 8);
        assert_eq!(m_class(9), 16);
        assert_eq!(m_class(512), 512);
        // The GEMV's limit is a class edge.
        assert_eq!(
            m_class(qlora_kernels::GEMV_MAX_M),
            qlora_kernels::GEMV_MAX_M
        );
        assert!(m_class(qlora_kernels::GEMV_MAX_M + 1) > qlora_kernels::GEMV_MAX_M);
    }

    #[test]
    fn candidates() {
        let key = |m, transposed| Nf4TuneKey::new(m_class(m), 64, 64, transposed, DType::F32);
        assert_eq!(priority(Nf4Kernel::Gemv, &key(1, false)), 0);
        assert!(priority(Nf4Kernel::Gemv, &key(1, true)) < 0);
        assert!(priority(Nf4Kernel::Gemv, &key(9, false)) < 0);
        for k in [
            Nf4Kernel::Tiled,
            Nf4Kernel::Simple,
            Nf4Kernel::DequantMatmul,
        ] {
            for (m, t) in [(1, false), (1, true), (9, false), (512, true)] {
                assert_eq!(priority(k, &key(m, t)), 0);
            }
        }
    }

    #[test]
    fn names_and_forcing_codes() {
        for k in Nf4Kernel::ALL {
            assert_eq!(Nf4Kernel::parse(&k.to_string()), Some(k));
            assert_eq!(decode(encode(Some(k))), Some(k));
        }
        assert_eq!(decode(encode(None)), None);
        assert_eq!(Nf4Kernel::parse("fast"), None);
    }

    #[test]
    fn one_tunable_per_kernel() {
        // Building the set needs no device.
        assert_eq!(nf4_tunables().len(), Nf4Kernel::ALL.len());
    }
}
