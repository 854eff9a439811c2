//! The AMX micro-kernel: one 32×32 f32 block of the output from four accumulator tiles.
//!
//! Per step of 32 along the reduction: two `A` tiles (16 rows × 32 bf16 each), two `B` tiles
//! (16 pair rows × 16 columns each), four `TDPBF16PS`. The tile intrinsics are unstable in
//! Rust 1.95, so the kernel is one `asm!` block; nothing else in the process uses the tile
//! registers, and [`with_tiles`] configures them for the calling thread and releases them.

use crate::pack::BLOCK;

const _: () = assert!(BLOCK == 32, "the kernel below computes 32x32 blocks");

/// The tile configuration (palette 1): tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            // colsb[t] (u16 at 16 + 2t) = 64 bytes; rows[t] (u8 at 48 + t) = 16.
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Self(c)
    }
}

/// Runs `f` with the tiles configured on this thread, then releases them.
///
/// # Safety
/// [`crate::Tier::Amx`] is available (CPU support and the OS grant).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    let cfg = TileConfig::new();
    // SAFETY: AMX is available (the caller's contract); the config is valid and 64-aligned.
    unsafe {
        std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }
    let r = f();
    // SAFETY: as above.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    r
}

/// `c[32 × 32] (+)= a · b` for two row tiles of `a` (`a` and `a + 16 × lda` elements, each
/// `steps` contiguous 16 × 32 tiles) and two 16-column blocks `b0`, `b1` of packed pairs; `c`
/// has row stride `ldc` f32 and is read first when `load_c` (accumulation), else overwritten.
///
/// # Safety
/// Inside [`with_tiles`]; `a` holds two rows of `steps` tiles, `16 × lda` elements apart;
/// `b0`, `b1` have `16 × steps` pair rows of 32 elements; `c` holds 32 rows of 32 f32 at
/// stride `ldc`, written by no one else meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block(
    a: *const u16,
    lda: usize,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    load_c: bool,
) {
    debug_assert!(steps > 0);
    // Tiles are contiguous: rows 64 bytes apart, the next step's tile 1 KiB on.
    // SAFETY: the caller's contract; every load and store stays inside the operands' extents.
    unsafe {
        std::arch::asm!(
            "test {load:e}, {load:e}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {ldc}*1]",
            "tileloadd tmm1, [{c} + {ldc}*1 + 64]",
            "tileloadd tmm2, [{c2} + {ldc}*1]",
            "tileloadd tmm3, [{c2} + {ldc}*1 + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            // Each product issues as soon as its operands are in, so that the loads of a
            // step overlap the products of the step before (tiles are not renamed).
            "tileloadd tmm4, [{a0} + {ldb}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {ldb}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            // 16 columns on = 64 bytes; 16 rows on = c2.
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c2} + {ldc}*1 + 64], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.add(16 * lda) => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            steps = inout(reg) steps => _,
            load = in(reg) load_c as u32,
            ldb = in(reg) 64usize,
            ldc = in(reg) ldc * 4,
            c = in(reg) c,
            c2 = in(reg) c.add(16 * ldc),
            options(nostack),
        );
    }
}
