//! Which bf16 hardware this machine has, and the process-wide choice among it.

use std::sync::OnceLock;

/// A kernel tier, best first. [`Tier::F32`] means "no bf16 kernel here: use f32".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Intel AMX (`amx_bf16` + `amx_tile`), after the OS granted the tile state.
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`) on AVX-512 cores without AMX (or with AMX refused).
    Avx512Bf16,
    /// No bf16 product pays on this machine: the caller keeps its f32 GEMM.
    F32,
}

impl Tier {
    /// Every tier, best first.
    pub const ALL: [Tier; 3] = [Tier::Amx, Tier::Avx512Bf16, Tier::F32];
    /// The tiers with a bf16 kernel, best first.
    pub const BF16: [Tier; 2] = [Tier::Amx, Tier::Avx512Bf16];

    /// The name printed in logs and accepted by [`Tier::from_name`]: `amx`, `avx512bf16`, `f32`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Amx => "amx",
            Tier::Avx512Bf16 => "avx512bf16",
            Tier::F32 => "f32",
        }
    }

    /// The tier named `name` (see [`Tier::name`]), if any.
    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether this machine can run the tier (for AMX, also whether Linux granted the tile
    /// state; the request is made once per process).
    pub fn available(self) -> bool {
        match self {
            Tier::Amx => amx_granted(),
            Tier::Avx512Bf16 => avx512bf16(),
            Tier::F32 => true,
        }
    }

    /// The best available tier, detected once per process.
    pub fn detect() -> Tier {
        static BEST: OnceLock<Tier> = OnceLock::new();
        *BEST.get_or_init(|| {
            Tier::ALL
                .into_iter()
                .find(|t| t.available())
                .unwrap_or(Tier::F32)
        })
    }

    /// The CPU flags that decide the tiers, as `lscpu` spells them, for benchmark records.
    pub fn cpu_flags() -> Vec<&'static str> {
        let mut flags = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                flags.push("avx2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                flags.push("avx512f");
            }
            if avx512bf16() {
                flags.push("avx512_bf16");
            }
            let (bf16, tile) = amx_cpuid();
            if bf16 {
                flags.push("amx_bf16");
            }
            if tile {
                flags.push("amx_tile");
            }
        }
        flags
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// AVX512-BF16 with the AVX-512 foundation it extends.
fn avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// CPUID leaf 7: (AMX-BF16, AMX-TILE), EDX bits 22 and 24.
#[cfg(target_arch = "x86_64")]
fn amx_cpuid() -> (bool, bool) {
    let max = std::arch::x86_64::__cpuid(0).eax;
    if max < 7 {
        return (false, false);
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    (edx & (1 << 22) != 0, edx & (1 << 24) != 0)
}

/// AMX in the CPU and the tile state granted by Linux (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`): without the grant the first tile instruction faults.
fn amx_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            let (bf16, tile) = amx_cpuid();
            if !(bf16 && tile) {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments; on failure it returns -1.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            rc == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}
