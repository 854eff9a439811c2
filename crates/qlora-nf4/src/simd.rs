//! Explicit SIMD for the hot loop of quantization on x86-64 (SSE2, which every x86-64 CPU has),
//! so that speed does not depend on how the compiler vectorises for a given `target-cpu`.
//!
//! Other architectures use the exact scalar bucket lookup of [`crate::Encoder4`].

/// Encodes one full block: `packed[i] = code(2i) << 4 | code(2i + 1)` with
/// `code(j) = #{mid < clamp(x[j] * inv, -1, 1)}` mapped through `sorted_to_code`.
/// `x.len()` is a multiple of 16 (every blocksize is).
#[inline]
pub(crate) fn encode_block(x: &[f32], inv: f32, enc: &crate::Encoder4, packed: &mut [u8]) {
    debug_assert!(x.len().is_multiple_of(16) && packed.len() * 2 == x.len());
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86-64 baseline; every pointer access stays inside the
        // 16-element chunks and 8-byte output chunks given by the chunk iterators.
        unsafe { x86::encode_block_sse2(x, inv, enc, packed) };
        return;
    }
    #[allow(unreachable_code)]
    let mut codes = [0u8; 16];
    for (xs, out) in x.chunks_exact(16).zip(packed.chunks_exact_mut(8)) {
        for (c, &v) in codes.iter_mut().zip(xs) {
            *c = enc.sorted_to_code[enc.encode_sorted_fast((v * inv).clamp(-1.0, 1.0)) as usize];
        }
        for (o, p) in out.iter_mut().zip(codes.chunks_exact(2)) {
            *o = (p[0] << 4) | p[1];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Sorted-index codes of 4 lanes: `#{mid < s}` as the sum of 15 compare masks.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn count4(s: __m128, mids: &[__m128; 15]) -> __m128i {
        let mut acc = _mm_setzero_si128();
        for m in mids {
            // A true compare is all ones (-1 as i32): subtracting it adds 1.
            acc = _mm_sub_epi32(acc, _mm_castps_si128(_mm_cmplt_ps(*m, s)));
        }
        acc
    }

    /// # Safety
    /// `x.len()` is a multiple of 16 and `packed.len() * 2 == x.len()`.
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn encode_block_sse2(
        x: &[f32],
        inv: f32,
        enc: &crate::Encoder4,
        packed: &mut [u8],
    ) {
        let mids = &enc.midpoints;
        let sorted = enc.is_sorted();
        let vinv = _mm_set1_ps(inv);
        let one = _mm_set1_ps(1.0);
        let minus_one = _mm_set1_ps(-1.0);
        let m: [__m128; 15] = core::array::from_fn(|i| _mm_set1_ps(mids[i]));
        let low_byte = _mm_set1_epi16(0x00ff);
        for (xs, out) in x.chunks_exact(16).zip(packed.chunks_exact_mut(8)) {
            let mut c = [_mm_setzero_si128(); 4];
            for (k, ck) in c.iter_mut().enumerate() {
                // SAFETY: 4k + 3 < 16 = xs.len().
                let v = unsafe { _mm_loadu_ps(xs.as_ptr().add(4 * k)) };
                let s = _mm_min_ps(_mm_max_ps(_mm_mul_ps(v, vinv), minus_one), one);
                *ck = count4(s, &m);
            }
            // 16 codes as u8, element order preserved.
            let c01 = _mm_packs_epi32(c[0], c[1]);
            let c23 = _mm_packs_epi32(c[2], c[3]);
            let mut bytes = _mm_packus_epi16(c01, c23);
            if !sorted {
                // FP4: sorted index -> bit-pattern code.
                let mut b = [0u8; 16];
                // SAFETY: `b` holds 16 bytes.
                unsafe { _mm_storeu_si128(b.as_mut_ptr() as *mut __m128i, bytes) };
                for v in &mut b {
                    *v = enc.sorted_to_code[*v as usize];
                }
                // SAFETY: `b` holds 16 bytes.
                bytes = unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) };
            }
            // As u16 lanes: low byte = even element, high byte = odd element.
            let hi = _mm_slli_epi16(_mm_and_si128(bytes, low_byte), 4);
            let lo = _mm_srli_epi16(bytes, 8);
            let pairs = _mm_or_si128(hi, lo);
            let out8 = _mm_packus_epi16(pairs, pairs);
            // SAFETY: `out` holds 8 bytes.
            unsafe { _mm_storel_epi64(out.as_mut_ptr() as *mut __m128i, out8) };
        }
    }
}
