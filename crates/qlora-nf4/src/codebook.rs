//! The two 4-bit code tables of bitsandbytes and the value → code search.
//!
//! NF4 ("4-bit NormalFloat", Dettmers et al. 2023, *QLoRA: Efficient Finetuning of Quantized
//! LLMs*, §3) holds the quantiles of N(0, 1) normalised to [-1, 1], with an exact zero at code 7.
//! FP4 is bnb's own 4-bit float (1 sign, 2 exponent, 1 mantissa bit, divided by 12), stored in
//! bit-pattern order, so its table is not sorted; code 8 (the sign bit alone) is a second zero:
//! `+0.0` in bnb's `quant_map` tensor, `-0.0` in what its dequantize kernel produces.

use crate::Nf4Error;

/// NF4 code table (index = 4-bit code), exactly `bnb.functional.get_4bit_type("nf4")` in f32.
/// The literals are bnb's own decimals; the golden test checks the f32 bits they round to.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 code table in bit-pattern order, exactly `get_4bit_type("fp4")` (values already / 12),
/// the `quant_map` bnb writes. Dequantization uses [`FP4_DEQUANT`].
pub const FP4_CODE: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// FP4 as bnb's dequantize kernel decodes it: [`FP4_CODE`] with code 8 = `-0.0`.
pub const FP4_DEQUANT: [f32; 16] = {
    let mut t = FP4_CODE;
    t[8] = -0.0;
    t
};

/// Which 4-bit table a tensor is quantized with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuantType {
    /// 4-bit NormalFloat, the QLoRA default.
    #[default]
    Nf4,
    /// bitsandbytes' 4-bit float.
    Fp4,
}

impl QuantType {
    /// The 16-entry table, indexed by code, as bnb stores it in `quant_map`.
    pub fn code_table(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_CODE,
        }
    }

    /// The values dequantization produces per code (bnb's kernels decode with fixed tables,
    /// never with the `quant_map` tensor).
    pub fn dequant_table(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_DEQUANT,
        }
    }

    /// The name bnb uses (`"nf4"` / `"fp4"`), in `quant_state` JSON and key suffixes.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    /// Parses bnb's name; `tensor` names the tensor for the error.
    pub fn parse(name: &str, tensor: &str) -> Result<Self, Nf4Error> {
        match name {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            other => Err(Nf4Error::UnknownQuantType {
                tensor: tensor.to_string(),
                name: other.to_string(),
            }),
        }
    }

    /// The encoder for this table.
    pub fn encoder(self) -> &'static Encoder4 {
        match self {
            QuantType::Nf4 => &ENCODERS.0,
            QuantType::Fp4 => &ENCODERS.1,
        }
    }
}

/// Nearest-code search for one 4-bit table, as bnb's CPU quantizer does it: the table is sorted,
/// the 15 f32 midpoints of neighbours are the decision bounds, and the code of a scaled value `s`
/// is the sorted index `#{mid < s}` (`searchsorted(mid, s, side="left")`, so a value exactly on a
/// midpoint goes to the lower code), mapped back to the bit pattern.
///
/// The fast path ([`Self::encode_sorted_fast`]) cuts [-1, 1] into [`BUCKETS`] buckets with the
/// monotone map `b(s) = ((s + 1) * BUCKETS/2) as usize`. Every midpoint in a bucket below `b(s)`
/// is below `s` and every one above is above it (monotonicity of f32 rounding), and no bucket
/// holds two midpoints, so `#{mid < s} = below[b] + (mid_in[b] < s)`: one lookup and one compare,
/// exactly the count.
#[derive(Debug, Clone)]
pub struct Encoder4 {
    /// f32 midpoints of the sorted table, ascending.
    pub midpoints: [f32; 15],
    /// `sorted_to_code[i]` = code whose value is the i-th smallest (stable sort).
    pub sorted_to_code: [u8; 16],
    /// Code given to the padding nibble of an odd element count (the code of 0.0).
    pub zero_code: u8,
    /// Per bucket: midpoints in lower buckets.
    below: Box<[u8; BUCKETS + 1]>,
    /// Per bucket: the midpoint inside it, or +∞.
    mid_in: Box<[f32; BUCKETS + 1]>,
}

/// Buckets of the fast encoder over [-1, 1].
pub const BUCKETS: usize = 4096;

#[inline(always)]
fn bucket(s: f32) -> usize {
    ((s + 1.0) * (BUCKETS / 2) as f32) as usize
}

impl Encoder4 {
    fn new(table: &[f32; 16]) -> Self {
        let mut order: [usize; 16] = core::array::from_fn(|i| i);
        // Stable sort by value; -0.0 and 0.0 compare equal and keep their table order.
        order.sort_by(|&a, &b| table[a].partial_cmp(&table[b]).expect("finite table"));
        let sorted: [f32; 16] = core::array::from_fn(|i| table[order[i]]);
        let midpoints: [f32; 15] = core::array::from_fn(|i| (sorted[i] + sorted[i + 1]) / 2.0);
        let sorted_to_code: [u8; 16] = core::array::from_fn(|i| order[i] as u8);
        let mut below = Box::new([0u8; BUCKETS + 1]);
        let mut mid_in = Box::new([f32::INFINITY; BUCKETS + 1]);
        for &m in &midpoints {
            let bm = bucket(m);
            assert!(
                mid_in[bm].is_infinite(),
                "two midpoints share bucket {bm}: widen BUCKETS"
            );
            mid_in[bm] = m;
            for b in &mut below[bm + 1..] {
                *b += 1;
            }
        }
        let mut enc = Encoder4 {
            midpoints,
            sorted_to_code,
            zero_code: 0,
            below,
            mid_in,
        };
        enc.zero_code = enc.encode(0.0);
        enc
    }

    /// Code of one already-scaled value (finite; values beyond ±1 take the end codes).
    #[inline]
    pub fn encode(&self, s: f32) -> u8 {
        self.sorted_to_code[self.encode_sorted_fast(s.clamp(-1.0, 1.0)) as usize]
    }

    /// Sorted index `#{mid < s}` by direct count of the 15 midpoints (the definition).
    #[inline]
    pub fn encode_sorted_exact(&self, s: f32) -> u8 {
        self.midpoints.iter().map(|&m| (m < s) as u8).sum()
    }

    /// Sorted index `#{mid < s}` for `s` in [-1, 1] by bucket lookup (see the type's docs).
    #[inline(always)]
    pub fn encode_sorted_fast(&self, s: f32) -> u8 {
        debug_assert!((-1.0..=1.0).contains(&s));
        let b = bucket(s);
        self.below[b] + (self.mid_in[b] < s) as u8
    }

    /// True if `sorted_to_code` is the identity (NF4), so the sorted index is the code.
    pub fn is_sorted(&self) -> bool {
        self.sorted_to_code
            .iter()
            .enumerate()
            .all(|(i, &c)| i == c as usize)
    }
}

static ENCODERS: std::sync::LazyLock<(Encoder4, Encoder4)> =
    std::sync::LazyLock::new(|| (Encoder4::new(&NF4_CODE), Encoder4::new(&FP4_CODE)));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_is_sorted_with_zero_at_7() {
        let e = QuantType::Nf4.encoder();
        assert_eq!(e.sorted_to_code, core::array::from_fn(|i| i as u8));
        assert_eq!(e.zero_code, 7);
        for (c, &v) in NF4_CODE.iter().enumerate() {
            assert_eq!(e.encode(v) as usize, c, "value {v}");
        }
    }

    #[test]
    fn fp4_round_trips_every_code_value() {
        let e = QuantType::Fp4.encoder();
        assert_eq!(e.zero_code, 0);
        for (c, &v) in FP4_CODE.iter().enumerate() {
            assert_eq!(FP4_CODE[e.encode(v) as usize], v, "code {c}");
        }
    }

    #[test]
    fn midpoint_ties_go_to_the_lower_code() {
        let e = QuantType::Nf4.encoder();
        for i in 0..15 {
            assert_eq!(e.encode(e.midpoints[i]) as usize, i);
            let up = f32::from_bits(
                e.midpoints[i]
                    .to_bits()
                    .wrapping_add(if e.midpoints[i] > 0.0 { 1 } else { u32::MAX }),
            );
            assert_eq!(e.encode(up) as usize, i + 1);
        }
    }

    #[test]
    fn bucket_lookup_equals_the_count() {
        for q in [QuantType::Nf4, QuantType::Fp4] {
            let e = q.encoder();
            let mut probes: Vec<f32> = vec![-1.0, 1.0, 0.0, -0.0];
            for &m in &e.midpoints {
                let b = m.to_bits();
                for d in 0..4u32 {
                    probes.extend([
                        f32::from_bits(b.wrapping_add(d)),
                        f32::from_bits(b.wrapping_sub(d)),
                    ]);
                }
            }
            probes.extend((0..=200_000).map(|i| -1.0 + 2.0 * i as f32 / 200_000.0));
            for s in probes.into_iter().filter(|s| (-1.0..=1.0).contains(s)) {
                assert_eq!(
                    e.encode_sorted_fast(s),
                    e.encode_sorted_exact(s),
                    "{q:?} at {s:e}"
                );
            }
        }
    }

    #[test]
    fn unknown_quant_type_is_named() {
        let err = QuantType::parse("int4", "w").unwrap_err();
        assert!(err.to_string().contains("int4") && err.to_string().contains("`w`"));
    }
}
