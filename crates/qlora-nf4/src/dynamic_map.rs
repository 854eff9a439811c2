//! bnb's 8-bit dynamic quantization maps and the blockwise 8-bit quantizer used by double
//! quantization (and by 8-bit optimizer state).
//!
//! The maps are `bitsandbytes.functional.create_dynamic_map(signed)` (Dettmers et al. 2022,
//! *8-bit Optimizers via Block-wise Quantization*): 256 sorted values with a dynamic exponent,
//! one exact 0 and a maximum of 1.0. They are stored here as their f32 bit patterns, which the
//! tests check against bnb's own tensors.

use rayon::prelude::*;

use crate::Nf4Error;

const SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];
const UNSIGNED_BITS: [u32; 256] = [
    0x00000000, 0x34ae7baa, 0x35500998, 0x360e9b38, 0x3692ccf6, 0x36de4c51, 0x3714e5d5, 0x3783126e,
    0x37e171a0, 0x381fe868, 0x384f1800, 0x387e479a, 0x3896bb99, 0x38ae5364, 0x38c5eb31, 0x3906594b,
    0x394154ca, 0x397c5049, 0x399ba5e4, 0x39b923a2, 0x39d6a163, 0x39f41f22, 0x3a08ce71, 0x3a178d50,
    0x3a264c30, 0x3a350b10, 0x3a43c9ef, 0x3a5288d0, 0x3a6147af, 0x3a70068e, 0x3a7ec56e, 0x3a958106,
    0x3aba5e35, 0x3adf3b64, 0x3b020c4a, 0x3b147ae1, 0x3b26e978, 0x3b395810, 0x3b4bc6a7, 0x3b5e3540,
    0x3b70a3d7, 0x3b818937, 0x3b8ac082, 0x3b93f7cf, 0x3b9d2f1a, 0x3ba66666, 0x3baf9db2, 0x3bb8d4fd,
    0x3bc20c4a, 0x3bcb4395, 0x3bd47ae1, 0x3bddb22e, 0x3be6e978, 0x3bf020c5, 0x3bf9580f, 0x3c0147ae,
    0x3c05e354, 0x3c0a7ef9, 0x3c0f1aa0, 0x3c13b645, 0x3c1851eb, 0x3c1ced92, 0x3c218937, 0x3c2f5c2a,
    0x3c466667, 0x3c5d70a3, 0x3c747ae2, 0x3c85c28f, 0x3c9147af, 0x3c9ccccd, 0x3ca851eb, 0x3cb3d70b,
    0x3cbf5c29, 0x3ccae147, 0x3cd66667, 0x3ce1eb87, 0x3ced70a3, 0x3cf8f5c3, 0x3d023d70, 0x3d080000,
    0x3d0dc28f, 0x3d13851f, 0x3d1947af, 0x3d1f0a3d, 0x3d24cccd, 0x3d2a8f5c, 0x3d3051eb, 0x3d36147b,
    0x3d3bd70a, 0x3d41999a, 0x3d475c28, 0x3d4d1eb8, 0x3d52e147, 0x3d58a3d7, 0x3d5e6667, 0x3d6428f7,
    0x3d69eb87, 0x3d6fae15, 0x3d7570a3, 0x3d7b3333, 0x3d807ae2, 0x3d835c2a, 0x3d863d71, 0x3d891eb8,
    0x3d8c0000, 0x3d8ee148, 0x3d91c290, 0x3d94a3d7, 0x3d97851f, 0x3d9a6667, 0x3d9d47af, 0x3da028f6,
    0x3da30a3e, 0x3da5eb85, 0x3da8cccd, 0x3dabae15, 0x3dae8f5c, 0x3db170a4, 0x3db451eb, 0x3db73333,
    0x3dba147b, 0x3dbcf5c3, 0x3dbfd70b, 0x3dc2b852, 0x3dc5999a, 0x3dc87ae2, 0x3dcb5c29, 0x3dd40000,
    0x3de26666, 0x3df0cccd, 0x3dff3333, 0x3e06cccc, 0x3e0e0000, 0x3e153334, 0x3e1c6666, 0x3e23999a,
    0x3e2acccc, 0x3e320000, 0x3e393334, 0x3e406666, 0x3e47999a, 0x3e4ecccc, 0x3e560000, 0x3e5d3334,
    0x3e646666, 0x3e6b999a, 0x3e72cccc, 0x3e7a0000, 0x3e809999, 0x3e843333, 0x3e87cccd, 0x3e8b6666,
    0x3e8f0000, 0x3e92999a, 0x3e963333, 0x3e99cccc, 0x3e9d6666, 0x3ea10000, 0x3ea4999a, 0x3ea83333,
    0x3eabcccc, 0x3eaf6666, 0x3eb30000, 0x3eb6999a, 0x3eba3333, 0x3ebdcccc, 0x3ec16666, 0x3ec50000,
    0x3ec8999a, 0x3ecc3333, 0x3ecfcccc, 0x3ed36666, 0x3ed70000, 0x3eda999a, 0x3ede3333, 0x3ee1cccc,
    0x3ee56666, 0x3ee90000, 0x3eec999a, 0x3ef03333, 0x3ef3cccc, 0x3ef76666, 0x3efb0000, 0x3efe9999,
    0x3f01199a, 0x3f02e666, 0x3f04b333, 0x3f068000, 0x3f084ccc, 0x3f0a199a, 0x3f0be666, 0x3f0db334,
    0x3f0f8000, 0x3f114ccd, 0x3f13199a, 0x3f14e666, 0x3f16b334, 0x3f188000, 0x3f1a4ccd, 0x3f1c199a,
    0x3f1de666, 0x3f1fb334, 0x3f218000, 0x3f234ccd, 0x3f25199a, 0x3f26e666, 0x3f28b334, 0x3f2a8000,
    0x3f2c4ccd, 0x3f2e199a, 0x3f2fe666, 0x3f31b334, 0x3f338000, 0x3f354ccd, 0x3f37199a, 0x3f38e666,
    0x3f3ab334, 0x3f3c8000, 0x3f3e4ccd, 0x3f40199a, 0x3f41e666, 0x3f43b334, 0x3f458000, 0x3f474ccc,
    0x3f49199a, 0x3f4ae666, 0x3f4cb334, 0x3f4e8000, 0x3f504ccc, 0x3f52199a, 0x3f53e666, 0x3f55b334,
    0x3f578000, 0x3f594ccc, 0x3f5b199a, 0x3f5ce666, 0x3f5eb334, 0x3f608000, 0x3f624ccc, 0x3f64199a,
    0x3f65e666, 0x3f67b334, 0x3f698000, 0x3f6b4ccc, 0x3f6d199a, 0x3f6ee666, 0x3f70b334, 0x3f728000,
    0x3f744ccc, 0x3f76199a, 0x3f77e666, 0x3f79b334, 0x3f7b8000, 0x3f7d4ccc, 0x3f7f199a, 0x3f800000,
];

/// The signed dynamic map (`create_dynamic_map(signed=True)`): the double-quant `nested_quant_map`
/// and the 8-bit Adam first-moment map. Ascending; index 127 is 0.0, index 255 is 1.0.
pub fn dynamic_map_signed() -> &'static [f32; 256] {
    &SIGNED
}

/// The unsigned dynamic map (`create_dynamic_map(signed=False)`): the 8-bit Adam second-moment
/// map. Ascending; index 0 is 0.0, index 255 is 1.0.
pub fn dynamic_map_unsigned() -> &'static [f32; 256] {
    &UNSIGNED
}

static SIGNED: std::sync::LazyLock<[f32; 256]> =
    std::sync::LazyLock::new(|| SIGNED_BITS.map(f32::from_bits));
static UNSIGNED: std::sync::LazyLock<[f32; 256]> =
    std::sync::LazyLock::new(|| UNSIGNED_BITS.map(f32::from_bits));

/// Index of the exact nearest entry of an ascending `map` to `x` (ties to the lower index),
/// distances measured in f64 as bnb's reference does (`argmin |x - map|`).
#[inline]
pub fn nearest_code(map: &[f32; 256], x: f32) -> u8 {
    // hi = #{map < x}: a branchless lower bound over the 256 sorted entries.
    let mut hi = 0usize;
    for step in [128, 64, 32, 16, 8, 4, 2, 1] {
        hi += step * (map[hi + step - 1] < x) as usize;
    }
    hi += (map[255] < x && hi == 255) as usize;
    if hi == 0 {
        return 0;
    }
    if hi == map.len() {
        return 255;
    }
    let lo = hi - 1;
    let d_lo = (x as f64 - map[lo] as f64).abs();
    let d_hi = (map[hi] as f64 - x as f64).abs();
    if d_lo <= d_hi { lo as u8 } else { hi as u8 }
}

/// How the 8-bit code of a scaled value is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AbsmaxRounding {
    /// The exact nearest map entry, ties to the lower index: bnb's CUDA quantizer.
    #[default]
    Nearest,
    /// bnb's CPU build (`quantize_cpu_impl`): the value's position on a 65 536-step grid of
    /// `[-1, 1]` looked up in a table of the map's midpoints below each step; one map step off
    /// [`AbsmaxRounding::Nearest`] for about 0.25 % of values (those within ~1.5e-5 of a
    /// midpoint), and code 0 for an all-zero block. Files written with it are bit for bit the
    /// ones bnb writes on a CPU.
    CpuTable,
}

/// bnb-CPU's table for `map`: entry `i` is the number of f32 midpoints
/// `0.5 · (map[j] + map[j+1])` strictly below the grid point `-1 + 2i / 65535`.
fn cpu_table(map: &[f32; 256]) -> Vec<u8> {
    let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    (0..65536u32)
        .map(|i| {
            let at = -1.0f32 + 2.0f32 * i as f32 / 65535.0f32;
            mids.partition_point(|&m| m < at) as u8
        })
        .collect()
}

/// Blockwise 8-bit quantization on a dynamic map: per block of `blocksize` values,
/// `absmax = max |v|`, `code = nearest(map, clamp(v * (1/absmax), -1, 1))` (an f32 reciprocal,
/// then a multiply, as bnb's kernels do). An all-zero block codes every value as the map's zero.
///
/// Returns `(codes, absmax per block)`. `tensor` names the tensor for errors.
pub fn quantize_blockwise_8bit(
    values: &[f32],
    map: &[f32; 256],
    blocksize: usize,
    tensor: &str,
) -> Result<(Vec<u8>, Vec<f32>), Nf4Error> {
    quantize_blockwise_8bit_with(values, map, blocksize, AbsmaxRounding::Nearest, tensor)
}

/// [`quantize_blockwise_8bit`] with the codes chosen as `rounding` says.
pub fn quantize_blockwise_8bit_with(
    values: &[f32],
    map: &[f32; 256],
    blocksize: usize,
    rounding: AbsmaxRounding,
    tensor: &str,
) -> Result<(Vec<u8>, Vec<f32>), Nf4Error> {
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(Nf4Error::NonFinite {
            tensor: tensor.to_string(),
            index,
            value: values[index],
        });
    }
    let mut codes = vec![0u8; values.len()];
    let mut absmax = vec![0f32; values.len().div_ceil(blocksize)];
    let table = (rounding == AbsmaxRounding::CpuTable).then(|| cpu_table(map));
    codes
        .par_chunks_mut(blocksize)
        .zip(absmax.par_iter_mut())
        .zip(values.par_chunks(blocksize))
        .for_each(|((codes, am), block)| {
            *am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let inv = if *am > 0.0 { 1.0 / *am } else { 0.0 };
            match &table {
                None => {
                    for (c, &v) in codes.iter_mut().zip(block) {
                        *c = nearest_code(map, (v * inv).clamp(-1.0, 1.0));
                    }
                }
                // bnb-CPU codes an all-zero block 0.
                Some(_) if *am == 0.0 => codes.fill(0),
                Some(t) => {
                    for (c, &v) in codes.iter_mut().zip(block) {
                        let x = (v * inv).clamp(-1.0, 1.0);
                        *c = t[(((x + 1.0) * 0.5) * 65535.0 + 0.5) as u16 as usize];
                    }
                }
            }
        });
    Ok((codes, absmax))
}

/// Inverse of [`quantize_blockwise_8bit`]: `map[code] * absmax[block]` (one f32 multiply).
pub fn dequantize_blockwise_8bit(
    codes: &[u8],
    absmax: &[f32],
    map: &[f32; 256],
    blocksize: usize,
) -> Vec<f32> {
    codes
        .chunks(blocksize)
        .zip(absmax)
        .flat_map(|(block, &am)| block.iter().map(move |&c| map[c as usize] * am))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_their_anchors() {
        let s = dynamic_map_signed();
        assert_eq!(s[127], 0.0);
        assert_eq!(s[255], 1.0);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        let u = dynamic_map_unsigned();
        assert_eq!(u[0], 0.0);
        assert_eq!(u[255], 1.0);
        assert!(u.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn nearest_code_ties_go_low() {
        let s = dynamic_map_signed();
        for i in 0..255 {
            assert_eq!(nearest_code(s, s[i]) as usize, i);
            let mid = (s[i] as f64 + s[i + 1] as f64) / 2.0;
            // An f32 exactly at the f64 midpoint (if representable) goes low.
            if (mid as f32) as f64 == mid {
                assert_eq!(nearest_code(s, mid as f32) as usize, i);
            }
        }
        assert_eq!(nearest_code(s, -2.0), 0);
        assert_eq!(nearest_code(s, 2.0), 255);
    }

    #[test]
    fn blockwise_round_trip_is_close() {
        let v: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let (c, a) = quantize_blockwise_8bit(&v, dynamic_map_signed(), 256, "v").unwrap();
        let back = dequantize_blockwise_8bit(&c, &a, dynamic_map_signed(), 256);
        for (x, y) in v.iter().zip(&back) {
            assert!((x - y).abs() <= 3.0 * 0.02, "{x} vs {y}");
        }
    }
}
