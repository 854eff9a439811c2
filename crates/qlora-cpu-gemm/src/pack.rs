//! The operands in the layouts the bf16 instructions read, rounded to bf16 once.
//!
//! Both `TDPBF16PS` (AMX) and `VDPBF16PS` (AVX512-BF16) multiply pairs of bf16 along the
//! reduction dimension and add both products into one f32 lane. So `B` is stored as pairs:
//! for each block of 16 columns, row `p` holds `(B[2p, j], B[2p + 1, j])` for its 16 `j`
//! (64 bytes: one AMX tile row, one AVX-512 register). `A` is cut into 16 × 32 tiles, each
//! contiguous (one AMX tile load without a stride), its rows' pairs in order. Both are
//! zero-padded: rows of `A` and columns of `B` to 32 (one output block), the reduction to 32
//! (one AMX tile depth), so the kernels never test an edge.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Below this many elements an operand is packed on the calling thread alone: spreading a
/// few tiles over the cores costs more than packing them (attention's per-block operands,
/// packed inside tasks that already occupy every core).
const SERIAL_ELEMS: usize = 1 << 15;

/// The fewest items of `elems` elements each that a parallel packing task takes.
fn serial_items(elems: usize) -> usize {
    SERIAL_ELEMS.div_ceil(elems.max(1))
}

/// Rows and columns of one output block, and the reduction step of the kernels.
pub(crate) const BLOCK: usize = 32;
/// Columns in one packed column block (one tile row / register of pairs).
pub(crate) const COLS: usize = 16;
/// Rows of one tile of `A`.
pub(crate) const TILE_ROWS: usize = 16;

/// `x` rounded to the nearest bf16 (ties to even), as bits. NaN stays NaN (quietened).
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    // Both computed and one selected, so that loops over it vectorise.
    let quiet_nan = (b >> 16) | 0x40;
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    (if x.is_nan() { quiet_nan } else { rounded }) as u16
}

/// `x` rounded to the nearest bf16 (ties to even), back in f32: the value the kernels use.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Runs a packing loop compiled for AVX-512 (where LLVM vectorises the rounding: 16 lanes of
/// the same integer steps as [`bf16_bits`], so the bits are the same) when the CPU has it, else
/// the same loop for the baseline target. The packing of every operand of every product runs
/// through these loops: in the default model's training step it was 7 % of the time scalar.
macro_rules! wide {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: the CPU has AVX-512 F and BW (BW implies F), which the function
                // is compiled for.
                unsafe { avx512_loops::$f($($arg),*) }
            } else {
                $f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*)
        }
    }};
}

/// Rows `0..rows` of `src` (row stride `row_stride`, `k` columns) into a group of 16 × 32 tiles.
#[inline(always)]
fn pack_tile_rows(
    src: &[f32],
    rows: usize,
    k: usize,
    row_stride: usize,
    tiles: &mut [MaybeUninit<u16>],
) {
    for r in 0..rows {
        let row = &src[r * row_stride..r * row_stride + k];
        for (s, chunk) in row.chunks(BLOCK).enumerate() {
            let at = (s * TILE_ROWS + r) * BLOCK;
            for (d, &x) in tiles[at..at + chunk.len()].iter_mut().zip(chunk) {
                d.write(bf16_bits(x));
            }
        }
    }
}

/// `words[p] = pair(col[2p], col[2p + 1])` (the last pair's upper half 0 when `col` is odd).
#[inline(always)]
fn column_pairs(col: &[f32], words: &mut [u32]) {
    let (even, odd) = col.split_at(col.len() / 2 * 2);
    for (w, two) in words.iter_mut().zip(even.chunks_exact(2)) {
        *w = pair(two[0], two[1]);
    }
    if let [last] = odd {
        words[even.len() / 2] = pair(*last, 0.0);
    }
}

/// One packed column block: pair row `p` of column `c` is `words[c * live + p]` for the
/// `count` columns and `live` pairs there, 0 in the padding (the rest of the 16 columns and
/// of the block's pair rows).
#[inline(always)]
fn interleave_columns(words: &[u32], count: usize, live: usize, block: &mut [MaybeUninit<u32>]) {
    let (body, pad) = block.split_at_mut(live * COLS);
    for (p, row) in body.chunks_exact_mut(COLS).enumerate() {
        for (c, d) in row.iter_mut().enumerate() {
            d.write(if c < count { words[c * live + p] } else { 0 });
        }
    }
    pad.fill(MaybeUninit::new(0));
}

/// Pair row `p` of every column block of a packed `B` at `out` (`n_pad / 16` blocks of
/// `pairs` pair rows of 16 words): `pair(lo[j], hi[j])` for the `lo.len()` columns, 0 past them.
///
/// # Safety
/// `out` is valid for writes of `n_pad * pairs` words, pair row `p < pairs` of each block
/// written by no one else meanwhile; `hi` is as long as `lo`, at most `n_pad`.
#[inline(always)]
unsafe fn pair_row(lo: &[f32], hi: &[f32], n_pad: usize, out: *mut u32, pairs: usize, p: usize) {
    let n = lo.len();
    let hi = &hi[..n];
    for jb in 0..n_pad / COLS {
        let j0 = jb * COLS;
        // SAFETY: block jb < n_pad / 16, pair row p < pairs: inside `out` (the contract).
        let dst = unsafe { out.add((jb * pairs + p) * COLS) };
        if j0 + COLS <= n {
            let (l, h) = (&lo[j0..j0 + COLS], &hi[j0..j0 + COLS]);
            for c in 0..COLS {
                // SAFETY: c < 16 words of this block's pair row.
                unsafe { dst.add(c).write(pair(l[c], h[c])) };
            }
        } else {
            for c in 0..COLS {
                let j = j0 + c;
                let w = if j < n { pair(lo[j], hi[j]) } else { 0 };
                // SAFETY: as above.
                unsafe { dst.add(c).write(w) };
            }
        }
    }
}

/// The packing loops compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
mod avx512_loops {
    /// [`super::pack_tile_rows`] for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_tile_rows(
        src: &[f32],
        rows: usize,
        k: usize,
        row_stride: usize,
        tiles: &mut [std::mem::MaybeUninit<u16>],
    ) {
        super::pack_tile_rows(src, rows, k, row_stride, tiles)
    }

    /// [`super::pair_row`] for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW, and `super::pair_row`'s contract holds.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pair_row(
        lo: &[f32],
        hi: &[f32],
        n_pad: usize,
        out: *mut u32,
        pairs: usize,
        p: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { super::pair_row(lo, hi, n_pad, out, pairs, p) }
    }

    /// [`super::column_pairs`] for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn column_pairs(col: &[f32], words: &mut [u32]) {
        super::column_pairs(col, words)
    }

    /// [`super::interleave_columns`] for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn interleave_columns(
        words: &[u32],
        count: usize,
        live: usize,
        block: &mut [std::mem::MaybeUninit<u32>],
    ) {
        super::interleave_columns(words, count, live, block)
    }
}

/// The left operand `A [m, k]` in bf16, in tiles: for each 16 rows, for each 32 columns, a
/// contiguous 16 × 32 tile (1 KiB: one AMX tile load, no stride), zero-padded to multiples of
/// 32 rows and columns.
pub struct PackedA {
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// Padded depth (a multiple of 32).
    pub(crate) k_pad: usize,
    /// `[m_pad / 16][k_pad / 32][16][32]`.
    pub(crate) data: Vec<u16>,
}

impl PackedA {
    /// Packs `A[i, kk] = src[i * row_stride + kk]` for `i < m`, `kk < k`.
    ///
    /// # Panics
    /// If `src` is too short for those extents.
    pub fn from_f32(src: &[f32], m: usize, k: usize, row_stride: usize) -> Self {
        if m > 0 && k > 0 {
            assert!(
                src.len() >= (m - 1) * row_stride + k,
                "PackedA: source too short"
            );
        }
        let k_pad = k.next_multiple_of(BLOCK).max(BLOCK);
        let m_pad = m.next_multiple_of(BLOCK).max(BLOCK);
        let steps = k_pad / BLOCK;
        let mut data = Vec::with_capacity(m_pad * k_pad);
        data.spare_capacity_mut()
            .par_chunks_mut(TILE_ROWS * k_pad)
            .with_min_len(serial_items(TILE_ROWS * k_pad))
            .enumerate()
            .for_each(|(t, tiles)| {
                debug_assert_eq!(tiles.len(), steps * TILE_ROWS * BLOCK);
                let rows = TILE_ROWS.min(m.saturating_sub(t * TILE_ROWS));
                // Only tiles with padding (rows past m, columns past k) are zeroed first;
                // the others are written whole by the packing.
                if rows < TILE_ROWS || k < k_pad {
                    tiles.fill(MaybeUninit::new(0));
                }
                if rows > 0 {
                    let first = t * TILE_ROWS * row_stride;
                    wide!(pack_tile_rows(&src[first..], rows, k, row_stride, tiles));
                }
            });
        // SAFETY: every tile group was zeroed or written whole (16 rows × k = k_pad columns).
        unsafe { data.set_len(m_pad * k_pad) };
        Self { m, k, k_pad, data }
    }

    /// Rows of `A`.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// The reduction length.
    pub fn depth(&self) -> usize {
        self.k
    }
}

/// The right operand `B [k, n]` in bf16 pairs (see the module docs), padded with zeros.
pub struct PackedB {
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// Padded reduction length (a multiple of 32).
    pub(crate) k_pad: usize,
    /// `[n_pad / 16][k_pad / 2][16]` pairs, the lower half the even `k`.
    pub(crate) data: Vec<u32>,
}

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Shared(*mut u32);
// SAFETY: the tasks below write disjoint elements, and the buffer outlives them.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
impl Shared {
    fn at(self, i: usize) -> *mut u32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(i) }
    }
}

/// The pair `(lo, hi)` rounded to bf16, `lo` in the lower half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

impl PackedB {
    fn zeros(k: usize, n: usize) -> Self {
        let k_pad = k.next_multiple_of(BLOCK).max(BLOCK);
        let n_pad = n.next_multiple_of(BLOCK).max(BLOCK);
        Self {
            k,
            n,
            k_pad,
            data: vec![0u32; n_pad * k_pad / 2],
        }
    }

    /// Packs `B` given by its columns: `fill(j0, cols)` writes columns `j0 .. j0 + count` into
    /// `cols` as `[count, k]` rows (column `j` of `B` contiguous). This is the layout of a
    /// linear layer's weight `W [n, k]` for `x · Wᵀ`, so a 4-bit weight can be dequantized
    /// straight into it, 16 rows at a time, on every core.
    ///
    /// Each column is rounded into its pairs in one contiguous (vectorised) pass, then the 16
    /// columns of a block are interleaved into pair rows; every word of the result, padding
    /// included, is written once (no zeroing pass first).
    pub fn from_columns(k: usize, n: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        if k == 0 || n == 0 {
            return Self::zeros(k, n);
        }
        let k_pad = k.next_multiple_of(BLOCK).max(BLOCK);
        let n_pad = n.next_multiple_of(BLOCK).max(BLOCK);
        let pairs = k_pad / 2;
        // Pairs of one column that hold values (the last one half padding when k is odd).
        let live = k.div_ceil(2);
        let mut data = Vec::with_capacity(n_pad * pairs);
        data.spare_capacity_mut()
            .par_chunks_mut(pairs * COLS)
            .with_min_len(serial_items(pairs * COLS * 2))
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(buf, words): &mut (Vec<f32>, Vec<u32>), (jb, block)| {
                    let j0 = jb * COLS;
                    if j0 >= n {
                        block.fill(MaybeUninit::new(0));
                        return;
                    }
                    let count = COLS.min(n - j0);
                    buf.resize(count * k, 0.0);
                    fill(j0, &mut buf[..count * k]);
                    words.resize(count * live, 0);
                    for (col, w) in buf.chunks_exact(k).zip(words.chunks_exact_mut(live)) {
                        wide!(column_pairs(col, w));
                    }
                    wide!(interleave_columns(
                        &words[..count * live],
                        count,
                        live,
                        block
                    ));
                },
            );
        // SAFETY: every block was zeroed or written whole by `interleave_columns`.
        unsafe { data.set_len(n_pad * pairs) };
        Self { k, n, k_pad, data }
    }

    /// Packs `B` given by its rows: `fill(r0, rows)` writes rows `r0 .. r0 + count` into
    /// `rows` as `[count, n]` (row-major `B`, as `W [n, k]` is for `dy · W`).
    ///
    /// Every word of the result, padding included, is written once (no zeroing pass first).
    #[allow(unused_unsafe)] // `wide!`'s own `unsafe` inside the one `pair_row` needs
    pub fn from_rows(k: usize, n: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        if k == 0 || n == 0 {
            return Self::zeros(k, n);
        }
        const ROWS: usize = BLOCK;
        let k_pad = k.next_multiple_of(BLOCK).max(BLOCK);
        let n_pad = n.next_multiple_of(BLOCK).max(BLOCK);
        let pairs = k_pad / 2;
        let mut data: Vec<u32> = Vec::with_capacity(n_pad * pairs);
        let out = Shared(data.as_mut_ptr());
        // One task per 32 rows of B (16 pair rows of every column block), the last one's rows
        // past k (to k_pad) zero.
        (0..k_pad / ROWS)
            .into_par_iter()
            .with_min_len(serial_items(ROWS * n))
            .for_each_init(Vec::new, |buf: &mut Vec<f32>, t| {
                let r0 = t * ROWS;
                let count = ROWS.min(k - r0);
                buf.resize(ROWS * n, 0.0);
                buf[count * n..].fill(0.0);
                fill(r0, &mut buf[..count * n]);
                for (q, two) in buf.chunks_exact(2 * n).enumerate() {
                    let (lo, hi) = two.split_at(n);
                    // SAFETY: pair row r0 / 2 + q of every column block is this task's alone,
                    // and the buffer holds n_pad / 16 blocks of `pairs` pair rows.
                    unsafe { wide!(pair_row(lo, hi, n_pad, out.at(0), pairs, r0 / 2 + q)) };
                }
            });
        // SAFETY: the tasks wrote pair rows 0 .. k_pad / 2 of every block whole.
        unsafe { data.set_len(n_pad * pairs) };
        Self { k, n, k_pad, data }
    }

    /// Packs `B[kk, j] = src[kk * row_stride + j * col_stride]`.
    ///
    /// # Panics
    /// If `src` is too short for those extents.
    pub fn from_f32(src: &[f32], k: usize, n: usize, row_stride: usize, col_stride: usize) -> Self {
        if k > 0 && n > 0 {
            assert!(
                src.len() > (k - 1) * row_stride + (n - 1) * col_stride,
                "PackedB: source too short"
            );
        }
        Self::from_rows(k, n, |r0, rows| {
            for (r, row) in rows.chunks_exact_mut(n.max(1)).enumerate() {
                for (j, d) in row.iter_mut().enumerate() {
                    *d = src[(r0 + r) * row_stride + j * col_stride];
                }
            }
        })
    }

    /// The reduction length.
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Columns of `B`.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Pointer to column block `jb` (16 columns), pair row 0.
    pub(crate) fn block_ptr(&self, jb: usize) -> *const u16 {
        self.data[jb * (self.k_pad / 2) * COLS..].as_ptr() as *const u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose rounding is delicate: ties (to even, both ways), the largest finite values,
    /// infinities, NaNs with payloads, subnormals and signed zeros, then ordinary numbers.
    fn awkward(n: usize) -> Vec<f32> {
        let special = [
            f32::from_bits(0x3f80_8000), // tie, rounds down to even
            f32::from_bits(0x3f81_8000), // tie, rounds up to even
            f32::from_bits(0x3f80_8001),
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN
            f32::from_bits(0xffc1_2345),
            f32::from_bits(0x0000_0001), // smallest subnormal
            f32::from_bits(0x807f_ffff),
            0.0,
            -0.0,
        ];
        (0..n)
            .map(|i| {
                special
                    .get(i)
                    .copied()
                    .unwrap_or((i as f32 * 0.7311).sin() * 1e3)
            })
            .collect()
    }

    #[test]
    fn packing_by_columns_writes_every_word_as_packing_by_rows() {
        // Odd depths, widths off the 16-column blocks, and blocks that are padding only: the
        // words, padding included, equal those of the zero-initialised packing by rows.
        for (k, n) in [(1, 1), (45, 19), (70, 40), (33, 16), (64, 97)] {
            let src = awkward(k * n);
            // B[kk, j] = src[j * k + kk]: column j contiguous.
            let by_columns = PackedB::from_columns(k, n, |j0, cols| {
                cols.copy_from_slice(&src[j0 * k..j0 * k + cols.len()])
            });
            let by_rows = PackedB::from_f32(&src, k, n, 1, k);
            assert_eq!(by_columns.k_pad, by_rows.k_pad);
            assert_eq!(by_columns.data, by_rows.data, "k = {k}, n = {n}");
            // The padding is zero: pair rows past the depth, columns past the width.
            let pairs = by_rows.k_pad / 2;
            for (i, &w) in by_rows.data.iter().enumerate() {
                let (jb, p, c) = (i / (pairs * COLS), i / COLS % pairs, i % COLS);
                if 2 * p >= k || jb * COLS + c >= n {
                    assert_eq!(w, 0, "k = {k}, n = {n}: padding word {i}");
                }
            }
        }
    }

    #[test]
    fn packing_rounds_every_element_as_the_scalar_rounding() {
        // Runs the AVX-512 loops on CPUs that have them, the baseline ones elsewhere.
        let (m, k) = (19, 45);
        let src = awkward(m * k);
        let a = PackedA::from_f32(&src, m, k, k);
        for i in 0..m {
            for kk in 0..k {
                let (t, s, r) = (i / TILE_ROWS, kk / BLOCK, i % TILE_ROWS);
                let at = t * TILE_ROWS * a.k_pad + (s * TILE_ROWS + r) * BLOCK + kk % BLOCK;
                assert_eq!(a.data[at], bf16_bits(src[i * k + kk]), "A[{i}, {kk}]");
            }
        }
        let (k, n) = (45, 19);
        let b = PackedB::from_f32(&src, k, n, n, 1);
        for kk in 0..k {
            for j in 0..n {
                let word = b.data[((j / COLS) * (b.k_pad / 2) + kk / 2) * COLS + j % COLS];
                let half = if kk % 2 == 0 {
                    word as u16
                } else {
                    (word >> 16) as u16
                };
                assert_eq!(half, bf16_bits(src[kk * n + j]), "B[{kk}, {j}]");
            }
        }
    }
}
