//! Pure-Rust NF4 kernels on host slices: tiled dequantize-into-panel + SIMD GEMM (the `gemm`
//! crate), multithreaded with rayon. Never materialises the whole dense `W`: only one panel of
//! it at a time (a chunk of the reduction dimension for many activation rows, a cache-sized
//! tile of output rows per task for few).

use qlora_cpu_gemm::{PackedA, PackedB, Tier, gemm_bf16, gemm_bf16_uninit, matmul_tier};
use rayon::prelude::*;

use crate::Nf4Layout;

/// Largest panel of the few-rows path, in f32 elements (1 MiB): with at most [`LARGE_M`]
/// activation rows, re-packing them per panel is cheap, and the panel stays in a core's cache.
const PANEL_ELEMS: usize = 1 << 18;

/// From this many rows of activations on, the reduction dimension is chunked and each chunk
/// multiplied by a multithreaded GEMM (packing every operand once); below it, panels of the
/// output are spread over the cores, each multiplied single-threaded.
const LARGE_M: usize = 64;

/// Width of a reduction chunk in the large-M path: about a GEMM's own depth blocking, so the
/// extra passes over the output cost what a plain GEMM's passes cost.
const REDUCTION_CHUNK: usize = 512;

/// Width of a reduction chunk on the bf16 path (a multiple of 32, the tiles' depth): bounds
/// the packed bf16 chunk of `W` to `BF16_CHUNK × max(rows, cols)` elements, 22 MiB for a
/// LLaMA-7B MLP weight, rather than the whole weight.
const BF16_CHUNK: usize = 1024;

/// One NF4 weight on the host, its absmax decoded once.
pub struct CpuNf4<'a> {
    layout: Nf4Layout,
    packed: &'a [u8],
    absmax: Vec<f32>,
    code: &'static [f32; 16],
    pairs: [[f32; 2]; 256],
}

/// A raw output pointer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (distinct column ranges), and the
// buffer outlives the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

impl<'a> CpuNf4<'a> {
    /// Views the word tensors of an NF4 weight.
    ///
    /// # Panics
    /// If the word counts do not match the layout.
    pub fn new(layout: Nf4Layout, packed_words: &'a [u32], scales_words: &[u32]) -> Self {
        assert_eq!(
            packed_words.len(),
            layout.packed_words(),
            "NF4 packed tensor length"
        );
        let code = layout.quant_type.dequant_table();
        Self {
            layout,
            packed: &bytemuck::cast_slice(packed_words)[..layout.numel().div_ceil(2)],
            absmax: layout.decode_absmax(scales_words),
            code,
            pairs: qlora_nf4::pair_table(code),
        }
    }

    /// The weight's `[out, in]` rows: the width of `linear`'s output.
    pub fn out_features(&self) -> usize {
        self.layout.rows
    }

    /// The weight's `[out, in]` columns: the width of `linear`'s input.
    pub fn in_features(&self) -> usize {
        self.layout.cols
    }

    /// Dequantizes the elements `start .. start + out.len()` of the flat weight (sequential).
    fn dequant_range(&self, start: usize, out: &mut [f32]) {
        qlora_nf4::dequantize_4bit_seq(
            self.packed,
            &self.absmax,
            self.code,
            &self.pairs,
            self.layout.blocksize,
            start,
            out,
        );
    }

    /// The dense weight `[rows, cols]`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.layout.numel()];
        qlora_nf4::dequantize_4bit_into(
            self.packed,
            &self.absmax,
            self.code,
            self.layout.blocksize,
            0,
            &mut out,
        );
        out
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ`.
    ///
    /// # Panics
    /// If `x.len() != m * cols`.
    pub fn linear(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.linear_sharing_input(x, m, |_, _, _| {})
    }

    /// [`Self::linear`] that also hands each bf16-packed chunk of `x` to
    /// `also(tier, c0, chunk)` (columns `c0 .. c0 + chunk.depth()` of `x`, every row) when the
    /// product runs on a bf16 tier, so that a caller multiplies the same packed input again
    /// without packing it twice (the LoRA adapter's `x · Aᵀ` of the fused QLoRA linear). On
    /// the f32 path and for few rows `also` is never called.
    ///
    /// # Panics
    /// As [`Self::linear`].
    pub fn linear_sharing_input(
        &self,
        x: &[f32],
        m: usize,
        also: impl FnMut(Tier, usize, &PackedA),
    ) -> Vec<f32> {
        let (n, k) = (self.layout.rows, self.layout.cols);
        assert_eq!(x.len(), m * k, "nf4_linear: input length");
        if m >= LARGE_M && n > 0 {
            return match matmul_tier() {
                Tier::F32 => self.chunked_product(x, m, false),
                tier => self.linear_bf16(x, m, tier, also),
            };
        }
        let mut y = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return y;
        }
        let panel = panel_len(n, k, 8);
        let out = SharedOut(y.as_mut_ptr());
        (0..n.div_ceil(panel)).into_par_iter().for_each_init(
            || vec![0f32; panel * k],
            |buf, p| {
                let (r0, r1) = (p * panel, ((p + 1) * panel).min(n));
                let nb = r1 - r0;
                let w = &mut buf[..nb * k];
                self.dequant_range(r0 * k, w);
                // y[:, r0..r1] = x · wᵀ; w is [nb, k] row-major, so wᵀ(kk, j) = w[j * k + kk].
                // SAFETY: the destination is the column range r0..r1 of y (row stride n), which
                // no other task writes; lhs and rhs are valid for the given strides and sizes.
                unsafe {
                    gemm_acc(
                        (m, nb, k),
                        (out.at(r0), n as isize, false),
                        (x.as_ptr(), k as isize),
                        (w.as_ptr(), k as isize, 1),
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        y
    }

    /// The many-rows path of both products, one reduction chunk at a time, so each chunk of the
    /// activation and of `W` is packed once, as in a plain GEMM, and gemm spreads over the cores:
    /// - forward (`transposed = false`): `y += x[:, c0..c1] · W[:, c0..c1]ᵀ`, chunks of columns;
    /// - backward-input (`true`): `dx += dy[:, c0..c1] · W[c0..c1, :]`, chunks of rows.
    fn chunked_product(&self, lhs: &[f32], m: usize, transposed: bool) -> Vec<f32> {
        let (n, k) = (self.layout.rows, self.layout.cols);
        let (red, out_cols) = if transposed { (n, k) } else { (k, n) };
        let mut out = vec![0f32; m * out_cols];
        let chunk = REDUCTION_CHUNK.min(red);
        let mut buf = vec![0f32; chunk * out_cols];
        for (i, c0) in (0..red).step_by(chunk).enumerate() {
            let cw = chunk.min(red - c0);
            // The chunk of W, row-major: [n, cw] (columns c0..) or [cw, k] (rows c0..).
            let (row_len, rhs_strides) = if transposed {
                (k, (1, k as isize))
            } else {
                (cw, (cw as isize, 1))
            };
            let w = &mut buf[..cw * out_cols];
            w.par_chunks_mut(row_len).enumerate().for_each(|(r, row)| {
                let start = if transposed { (c0 + r) * k } else { r * k + c0 };
                self.dequant_range(start, row)
            });
            // SAFETY: out is [m, out_cols]; lhs[:, c0..] has row stride `red`; w is the chunk
            // with the strides above.
            unsafe {
                gemm_acc(
                    (m, out_cols, cw),
                    (out.as_mut_ptr(), out_cols as isize, i > 0),
                    (lhs.as_ptr().add(c0), red as isize),
                    (w.as_ptr(), rhs_strides.0, rhs_strides.1),
                    gemm::Parallelism::Rayon(0),
                );
            }
        }
        out
    }

    /// `y = x · Wᵀ` with bf16 operands and f32 accumulation on `tier` (QLoRA's
    /// `bnb_4bit_compute_dtype=bfloat16`): each chunk of `W`'s columns is dequantized straight
    /// into the packed bf16 layout, 16 rows of `W` per task, and multiplied into `y`.
    fn linear_bf16(
        &self,
        x: &[f32],
        m: usize,
        tier: Tier,
        mut also: impl FnMut(Tier, usize, &PackedA),
    ) -> Vec<f32> {
        let (n, k) = (self.layout.rows, self.layout.cols);
        if k == 0 {
            return vec![0f32; m * n];
        }
        let mut y = Vec::with_capacity(m * n);
        for (i, c0) in (0..k).step_by(BF16_CHUNK).enumerate() {
            let cw = BF16_CHUNK.min(k - c0);
            let a = PackedA::from_f32(&x[c0..], m, cw, k);
            let b = PackedB::from_columns(cw, n, |j0, cols| {
                for (c, col) in cols.chunks_exact_mut(cw).enumerate() {
                    self.dequant_range((j0 + c) * k + c0, col);
                }
            });
            product_into(tier, &a, &b, &mut y, n, i);
            also(tier, c0, &a);
        }
        y
    }

    /// `dx = dy · W` with bf16 operands and f32 accumulation on `tier`, chunk by chunk of
    /// `W`'s rows (the reduction), each dequantized straight into the packed layout.
    fn linear_backward_input_bf16(
        &self,
        dy: &[f32],
        m: usize,
        tier: Tier,
        mut also: impl FnMut(Tier, usize, &PackedA),
    ) -> Vec<f32> {
        let (n, k) = (self.layout.rows, self.layout.cols);
        if n == 0 {
            return vec![0f32; m * k];
        }
        let mut dx = Vec::with_capacity(m * k);
        for (i, r0) in (0..n).step_by(BF16_CHUNK).enumerate() {
            let rw = BF16_CHUNK.min(n - r0);
            let a = PackedA::from_f32(&dy[r0..], m, rw, n);
            let b = PackedB::from_rows(rw, k, |q0, rows| self.dequant_range((r0 + q0) * k, rows));
            product_into(tier, &a, &b, &mut dx, k, i);
            also(tier, r0, &a);
        }
        dx
    }

    /// `dx[m, cols] = dy[m, rows] · W`.
    ///
    /// # Panics
    /// If `dy.len() != m * rows`.
    pub fn linear_backward_input(&self, dy: &[f32], m: usize) -> Vec<f32> {
        self.linear_backward_input_sharing(dy, m, |_, _, _| {})
    }

    /// [`Self::linear_backward_input`] that also hands each bf16-packed chunk of `dy` to
    /// `also(tier, c0, chunk)` (columns `c0 .. c0 + chunk.depth()` of `dy`), as
    /// [`Self::linear_sharing_input`] does for `x` (the adapter's `dy · B`).
    ///
    /// # Panics
    /// As [`Self::linear_backward_input`].
    pub fn linear_backward_input_sharing(
        &self,
        dy: &[f32],
        m: usize,
        also: impl FnMut(Tier, usize, &PackedA),
    ) -> Vec<f32> {
        let (n, k) = (self.layout.rows, self.layout.cols);
        assert_eq!(dy.len(), m * n, "nf4_linear_backward_input: input length");
        if m >= LARGE_M && n > 0 && k > 0 {
            return match matmul_tier() {
                Tier::F32 => self.chunked_product(dy, m, true),
                tier => self.linear_backward_input_bf16(dy, m, tier, also),
            };
        }
        let mut dx = vec![0f32; m * k];
        if m == 0 || k == 0 || n == 0 {
            return dx;
        }
        // Few rows: each task takes contiguous row panels of W, dequantizes them (one run per
        // panel) and accumulates dy[:, r0..r1] · W[r0..r1, :] into its own partial dx; the
        // partials are summed at the end.
        let panel = panel_len(n, k, 8);
        let partial = (0..n.div_ceil(panel))
            .into_par_iter()
            .fold(
                || (vec![0f32; m * k], vec![0f32; panel * k], false),
                |(mut acc, mut buf, started), p| {
                    let (r0, r1) = (p * panel, ((p + 1) * panel).min(n));
                    let nb = r1 - r0;
                    let w = &mut buf[..nb * k];
                    self.dequant_range(r0 * k, w);
                    // SAFETY: acc is [m, k]; dy[:, r0..] has row stride n; w is [nb, k].
                    unsafe {
                        gemm_acc(
                            (m, k, nb),
                            (acc.as_mut_ptr(), k as isize, started),
                            (dy.as_ptr().add(r0), n as isize),
                            (w.as_ptr(), 1, k as isize),
                            gemm::Parallelism::None,
                        );
                    }
                    (acc, buf, true)
                },
            )
            .map(|(acc, _, _)| acc)
            .reduce_with(|mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            });
        if let Some(p) = partial {
            dx = p;
        }
        dx
    }
}

/// Chunk `i` of a product chunked along its reduction into `out` (`[a.rows(), rs]`,
/// contiguous): the first chunk writes the fresh, uninitialised buffer without zeroing it
/// first (every element is written), the others accumulate.
fn product_into(tier: Tier, a: &PackedA, b: &PackedB, out: &mut Vec<f32>, rs: usize, i: usize) {
    if i == 0 {
        let len = a.rows() * rs;
        gemm_bf16_uninit(tier, a, b, &mut out.spare_capacity_mut()[..len], rs);
        // SAFETY: `gemm_bf16_uninit` wrote all `len` elements (`[m, rs]`, contiguous).
        unsafe { out.set_len(len) };
    } else {
        gemm_bf16(tier, a, b, out, rs, true);
    }
}

/// `out[m, n] = out (if `accumulate`) + lhs[m, k] · rhs[k, n]` for row-major `out` and `lhs`
/// (unit column stride, given row stride) and `rhs` with given column and row strides.
///
/// # Safety
/// Every pointer is valid for the extents its strides and sizes imply, and `out` is not
/// written by anyone else meanwhile.
pub(crate) unsafe fn gemm_acc(
    (m, n, k): (usize, usize, usize),
    (out, out_rs, accumulate): (*mut f32, isize, bool),
    (lhs, lhs_rs): (*const f32, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_rs,
            accumulate,
            lhs,
            1,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Panel size along a dimension of length `len` whose slices have `other` elements: about four
/// panels per thread, a multiple of `align`, at most [`PANEL_ELEMS`] elements.
fn panel_len(len: usize, other: usize, align: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let balanced = len.div_ceil(threads * 4).next_multiple_of(align);
    let cap = (PANEL_ELEMS / other.max(1)).max(align) / align * align;
    balanced.min(cap).max(align)
}
