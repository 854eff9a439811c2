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
    // Row r of the block is row r % 16 of the tile row r / 16, whose tiles start 16 × lda
    // elements apart; pair p of a row lies in step p / 16 (tiles 512 elements apart).
    for g in 0..BLOCK / ROWS {
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        // SAFETY: every address below is inside `a`'s two tile rows and `b0`/`b1`'s pairs.
        unsafe {
            let rows: [*const u32; ROWS] = std::array::from_fn(|r| {
                let row = g * ROWS + r;
                a.add((row / 16) * 16 * lda + (row % 16) * BLOCK) as *const u32
            });
            for s in 0..steps {
                for q in 0..BLOCK / 2 {
                    let p = s * BLOCK / 2 + q;
                    let w0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(b0.add(p * 32) as *const __m512i));
                    let w1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(b1.add(p * 32) as *const __m512i));
                    for r in 0..ROWS {
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                            rows[r].add(s * 256 + q).read_unaligned() as i32,
                        ));
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
                    }
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
