//! A bf16 × bf16 → f32 matrix product on the CPU's bf16 hardware, chosen at run time.
//!
//! QLoRA computes in bf16 (`bnb_4bit_compute_dtype=torch.bfloat16`, Dettmers et al. 2023,
//! §3): the NF4 weight is dequantized to bf16 and multiplied with bf16 activations, the
//! products accumulated in f32. On x86-64 CPUs with AMX (`TDPBF16PS`, a 16×16×32 tile product
//! per instruction) such a product runs 4–7× faster than an f32 one; with AVX512-BF16
//! (`VDPBF16PS`, pairs of bf16 products added into f32 lanes) about 2× in peak. The tier is
//! detected once per process ([`Tier::detect`]), and a machine with neither keeps the f32 path
//! (the caller's own f32 GEMM): rounding to bf16 there would lose precision for no speed.
//!
//! The operands are packed once per product: [`PackedA`] (bf16 in contiguous 16 × 32 tiles, zero-padded) and
//! [`PackedB`] (bf16 in the VNNI pair layout both instructions read: for each block of 16
//! columns, rows of 16 pairs of consecutive `k`). [`gemm_bf16`] then runs the tier's
//! micro-kernel over 32×32 blocks of the output on every core, each task keeping one row
//! block of `A` in L1 while column blocks of `B` stream past it. [`gemm_bf16_serial`] runs one
//! small product on the calling thread over a [`PackedBView`] (columns and reduction rows
//! from 32-aligned offsets), for tasks already spread over the cores (attention's blocks).
//!
//! ARM has no tier yet: its BF16 `BFMMLA` and SME would be further [`Tier`] variants with
//! their own packing, behind the same [`gemm_bf16`].

mod amx;
mod avx512;
mod calibrate;
mod gemm;
mod pack;
mod policy;
mod tier;

pub use calibrate::{fastest_tier, gemm_f32};
pub use gemm::{PackedBView, gemm_bf16, gemm_bf16_serial, gemm_bf16_uninit};
pub use pack::{PackedA, PackedB, round_bf16};
pub use policy::{matmul_tier, set_matmul_tier};
pub use tier::Tier;
