//! The AVX512-BF16 micro-kernel: a 32×32 f32 block of the output, 8 rows × 32 columns at a
//! time in 16 registers, one `VDPBF16PS` per row and 16 columns per pair of `k`.

use crate::pack::BLOCK;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Same contract as [`crate::amx::block`], without the tiles: `c = a · b` over `steps × 32`.
///
/// # Safety
/// AVX512-BF16 is available; the operands' extents as in [`crate::amx::block`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn block(
    a: *const u16,
    lda: usize,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c: *mut f32,
) {
    const ROWS: usize = 8;
    let pairs = steps * BLOCK / 2;
    for g in 0..BLOCK / ROWS {
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        // SAFETY: row g*8 + r of `a` and pair row p of `b0`/`b1` are inside their extents.
        unsafe {
            let rows: [*const u32; ROWS] =
                std::array::from_fn(|r| a.add((g * ROWS + r) * lda) as *const u32);
            for p in 0..pairs {
                let w0: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b0.add(p * 32) as *const __m512i));
                let w1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b1.add(p * 32) as *const __m512i));
                for r in 0..ROWS {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                        rows[r].add(p).read_unaligned() as i32,
                    ));
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let out = c.add((g * ROWS + r) * BLOCK);
                _mm512_storeu_ps(out, row[0]);
                _mm512_storeu_ps(out.add(16), row[1]);
            }
        }
    }
}
