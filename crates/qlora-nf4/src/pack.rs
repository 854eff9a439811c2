//! Nibble packing in bnb's order: element `2i` in the HIGH nibble, `2i + 1` in the low one.

/// Packs 4-bit codes (each `< 16`) two per byte, high nibble first. An odd count is padded with
/// `pad` (bnb pads with the code of 0.0).
pub fn pack_nibbles(codes: &[u8], pad: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(codes.len().div_ceil(2));
    let mut pairs = codes.chunks_exact(2);
    for p in &mut pairs {
        out.push((p[0] << 4) | (p[1] & 0x0f));
    }
    if let [last] = pairs.remainder() {
        out.push((last << 4) | (pad & 0x0f));
    }
    out
}

/// Unpacks `n` codes from packed bytes (the inverse of [`pack_nibbles`]).
///
/// # Panics
/// If `packed` holds fewer than `n` nibbles.
pub fn unpack_nibbles(packed: &[u8], n: usize) -> Vec<u8> {
    assert!(
        packed.len() * 2 >= n,
        "unpack_nibbles: {} bytes hold fewer than {n} codes",
        packed.len()
    );
    let mut out = Vec::with_capacity(n + 1);
    for &b in &packed[..n.div_ceil(2)] {
        out.push(b >> 4);
        out.push(b & 0x0f);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_nibble_first_and_padding() {
        assert_eq!(pack_nibbles(&[1, 2, 3], 7), vec![0x12, 0x37]);
        assert_eq!(unpack_nibbles(&[0x12, 0x37], 3), vec![1, 2, 3]);
    }
}
