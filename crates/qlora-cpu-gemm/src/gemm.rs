//! The product over every 32×32 block of the output, spread over the cores.

use rayon::prelude::*;

use crate::pack::{BLOCK, PackedA, PackedB};

use crate::tier::Tier;

/// A raw output pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes its own blocks of the output, which outlives the loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the output.
        unsafe { self.0.add(i) }
    }
}

/// `out[m, n] = (out if accumulate) + A · B`, with `A`, `B` rounded to bf16 when packed and
/// every product accumulated in f32. `out` is row-major with row stride `out_rs`.
///
/// # Panics
/// If `tier` is [`Tier::F32`] or not available here (API misuse: the caller chooses the f32
/// path itself), if the depths of `A` and `B` differ, or if `out` is too short.
pub fn gemm_bf16(
    tier: Tier,
    a: &PackedA,
    b: &PackedB,
    out: &mut [f32],
    out_rs: usize,
    accumulate: bool,
) {
    // SAFETY: `out` is initialised and valid for its length.
    unsafe {
        gemm_bf16_raw(
            tier,
            a,
            b,
            (out.as_mut_ptr(), out.len()),
            out_rs,
            accumulate,
        )
    }
}

/// [`gemm_bf16`] without accumulation into an output that need not be initialised: every
/// element of the `[m, n]` region (row stride `out_rs`) is written, so a caller that fills a
/// fresh buffer saves zeroing it first (a `memset` of every product's output otherwise, once
/// freed memory is reused).
///
/// # Panics
/// As [`gemm_bf16`].
pub fn gemm_bf16_uninit(
    tier: Tier,
    a: &PackedA,
    b: &PackedB,
    out: &mut [std::mem::MaybeUninit<f32>],
    out_rs: usize,
) {
    // SAFETY: valid for its length; without accumulation nothing is read from it, and
    // elements are written through raw pointers only.
    unsafe {
        gemm_bf16_raw(
            tier,
            a,
            b,
            (out.as_mut_ptr().cast(), out.len()),
            out_rs,
            false,
        )
    }
}

/// Columns `j0 .. j0 + n` of a [`PackedB`], read from its reduction row `k0` on (both
/// multiples of 32): the right operand of [`gemm_bf16_serial`], so that one packing of an
/// operand serves products over parts of it (attention's keys of one block of queries).
#[derive(Clone, Copy)]
pub struct PackedBView<'a> {
    b: &'a PackedB,
    k0: usize,
    j0: usize,
    n: usize,
}

impl PackedB {
    /// The whole of `B`.
    pub fn full(&self) -> PackedBView<'_> {
        PackedBView {
            b: self,
            k0: 0,
            j0: 0,
            n: self.n,
        }
    }

    /// Columns `j0 .. j0 + n`, from reduction row `k0` on.
    ///
    /// # Panics
    /// If `k0` or `j0` is not a multiple of 32, or the columns pass `B`'s.
    pub fn view(&self, k0: usize, j0: usize, n: usize) -> PackedBView<'_> {
        assert!(
            k0.is_multiple_of(BLOCK) && j0.is_multiple_of(BLOCK),
            "PackedB::view: offsets {k0}, {j0} are not multiples of {BLOCK}"
        );
        assert!(
            j0 + n <= self.n && k0 <= self.k,
            "PackedB::view: columns {j0}..{} or row {k0} outside [{}, {}]",
            j0 + n,
            self.k,
            self.n
        );
        PackedBView { b: self, k0, j0, n }
    }
}

impl PackedBView<'_> {
    /// Pointer to column block `jb` (16 columns, counted from the view's first), at the view's
    /// first reduction row.
    fn block_ptr(&self, jb: usize) -> *const u16 {
        // Pair rows are 16 u32 (32 u16) apart; row k0 is pair row k0 / 2.
        // SAFETY: k0 ≤ k ≤ k_pad, so the offset stays inside the column block.
        unsafe { self.b.block_ptr(self.j0 / 16 + jb).add(self.k0 * 16) }
    }
}

/// [`gemm_bf16`] on the calling thread alone, over a view of `B`: for the many small products
/// of tasks that are already spread over the cores (attention's blocks of one head). `A`'s
/// padded depth is read from the view's first row: `B` has at least that many rows there
/// (the rows past `B`'s own depth are its zero padding).
///
/// # Panics
/// As [`gemm_bf16`], and if `A` is deeper than the view's rows.
pub fn gemm_bf16_serial(
    tier: Tier,
    a: &PackedA,
    b: PackedBView<'_>,
    out: &mut [f32],
    out_rs: usize,
    accumulate: bool,
) {
    assert!(
        a.k + b.k0 <= b.b.k_pad,
        "gemm_bf16_serial: A's depth {} passes B's rows from {}",
        a.k,
        b.k0
    );
    let (m, n) = (a.m, b.n);
    check(tier, m, n, out.len(), out_rs);
    if m == 0 || n == 0 {
        return;
    }
    let shared = SharedOut(out.as_mut_ptr());
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    let run = || {
        for ib in 0..row_blocks {
            // SAFETY: the output is this call's alone, initialised, and long enough (checked).
            unsafe { blocks(tier, a, &b, shared, out_rs, accumulate, ib, 0..col_blocks) };
        }
    };
    match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX is available (checked).
        Tier::Amx => unsafe { crate::amx::with_tiles(run) },
        _ => run(),
    }
}

/// The checks every product makes: the tier has a bf16 kernel here, the output holds `[m, n]`.
fn check(tier: Tier, m: usize, n: usize, out_len: usize, out_rs: usize) {
    assert!(
        tier != Tier::F32 && tier.available(),
        "gemm_bf16: tier {tier} is not a bf16 kernel available on this machine"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(out_rs >= n, "gemm_bf16: output row stride below its width");
    assert!(
        out_len >= (m - 1) * out_rs + n,
        "gemm_bf16: output too short"
    );
}

/// The product into `out` (pointer, length): read only when `accumulate`.
///
/// # Safety
/// `out` is valid for writes of its length, and initialised when `accumulate`.
unsafe fn gemm_bf16_raw(
    tier: Tier,
    a: &PackedA,
    b: &PackedB,
    (out, out_len): (*mut f32, usize),
    out_rs: usize,
    accumulate: bool,
) {
    assert_eq!(a.k, b.k, "gemm_bf16: depth of A and B");
    let (m, n) = (a.m, b.n);
    check(tier, m, n, out_len, out_rs);
    if m == 0 || n == 0 {
        return;
    }
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    // Enough tasks to balance the cores. A task keeps one row block of A (32 rows, the whole
    // depth) in L1 and streams its column blocks of B past it: each block of the output then
    // reads only its B block from L2, not both operands.
    let want = rayon::current_num_threads().max(1) * 4;
    let chunks = want.div_ceil(row_blocks).clamp(1, col_blocks);
    let cols_per_task = col_blocks.div_ceil(chunks);
    let shared = SharedOut(out);
    let tasks = row_blocks * col_blocks.div_ceil(cols_per_task);
    let view = b.full();
    (0..tasks).into_par_iter().for_each(|t| {
        let (ib, chunk) = (t % row_blocks, t / row_blocks);
        let jb0 = chunk * cols_per_task;
        let jb1 = (jb0 + cols_per_task).min(col_blocks);
        // SAFETY: tasks write disjoint blocks of the output, which the caller's contract
        // makes valid (and initialised when accumulating).
        let run = || unsafe { blocks(tier, a, &view, shared, out_rs, accumulate, ib, jb0..jb1) };
        match tier {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX is available (checked).
            Tier::Amx => unsafe { crate::amx::with_tiles(run) },
            _ => run(),
        }
    });
}

/// Blocks `(ib, jb)` for `jb` in `jbs` of the output (32 × 32 each) on the calling thread
/// (inside [`crate::amx::with_tiles`] for AMX).
///
/// # Safety
/// The tier is available; `out` holds `[a.m, b.n]` at row stride `out_rs`, these blocks
/// written by no one else meanwhile (and initialised when `accumulate`); `b` has `a.k_pad`
/// rows from its first.
#[allow(clippy::too_many_arguments)]
unsafe fn blocks(
    tier: Tier,
    a: &PackedA,
    b: &PackedBView<'_>,
    out: SharedOut,
    out_rs: usize,
    accumulate: bool,
    ib: usize,
    jbs: std::ops::Range<usize>,
) {
    let (m, n) = (a.m, b.n);
    let steps = a.k_pad / BLOCK;
    let mut c = [0f32; BLOCK * BLOCK];
    for jb in jbs {
        let a_ptr = a.data[ib * BLOCK * a.k_pad..].as_ptr();
        let (b0, b1) = (b.block_ptr(2 * jb), b.block_ptr(2 * jb + 1));
        let (i0, j0) = (ib * BLOCK, jb * BLOCK);
        let (rows, cols) = (BLOCK.min(m - i0), BLOCK.min(n - j0));
        // AMX stores a whole block straight into the output (and loads it first to
        // accumulate); edge blocks and the AVX-512 kernel go through `c`.
        let direct = tier == Tier::Amx && rows == BLOCK && cols == BLOCK;
        // SAFETY: the tier is available; A has 32 padded rows from block ib with `steps`
        // tiles, B has both 16-column blocks of jb with `steps` tile depths from its first
        // row; the destination is either `c` (32 × 32) or block (ib, jb) of the output.
        unsafe {
            match tier {
                #[cfg(target_arch = "x86_64")]
                Tier::Amx if direct => crate::amx::block(
                    a_ptr,
                    a.k_pad,
                    b0,
                    b1,
                    steps,
                    out.at(i0 * out_rs + j0),
                    out_rs,
                    accumulate,
                ),
                #[cfg(target_arch = "x86_64")]
                Tier::Amx => {
                    crate::amx::block(a_ptr, a.k_pad, b0, b1, steps, c.as_mut_ptr(), BLOCK, false)
                }
                #[cfg(target_arch = "x86_64")]
                Tier::Avx512Bf16 => {
                    crate::avx512::block(a_ptr, a.k_pad, b0, b1, steps, c.as_mut_ptr())
                }
                _ => unreachable!("checked by the callers"),
            }
        }
        if direct {
            continue;
        }
        for r in 0..rows {
            let src = &c[r * BLOCK..r * BLOCK + cols];
            let at = out.at((i0 + r) * out_rs + j0);
            if accumulate {
                // SAFETY: block (ib, jb) of the output is this caller's alone, in bounds, and
                // initialised (the contract when accumulating).
                let dst = unsafe { std::slice::from_raw_parts_mut(at, cols) };
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            } else {
                // SAFETY: as above; written without being read.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), at, cols) };
            }
        }
    }
}
