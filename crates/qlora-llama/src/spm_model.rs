//! A SentencePiece model file (`tokenizer.model`): its pieces with their scores and types, read
//! from the protobuf directly (`ModelProto.pieces`: piece, score, type) rather than through a
//! protobuf crate, three fields of one message being all the GGUF export needs.

use std::path::Path;

use crate::LlamaError;

/// SentencePiece's piece types (`ModelProto.SentencePiece.Type`).
pub(crate) const NORMAL: i32 = 1;
pub(crate) const UNKNOWN: i32 = 2;
pub(crate) const CONTROL: i32 = 3;
pub(crate) const USER_DEFINED: i32 = 4;
pub(crate) const UNUSED: i32 = 5;
pub(crate) const BYTE: i32 = 6;

/// The pieces of a `tokenizer.model`: text, score and type, by id.
pub(crate) fn read_pieces(path: &Path) -> Result<Vec<(String, f32, i32)>, LlamaError> {
    let bytes = std::fs::read(path).map_err(|e| LlamaError::io(path, e))?;
    let bad = |problem: &str| {
        LlamaError::format(
            path,
            format!("not a SentencePiece model (tokenizer.model): {problem}"),
        )
    };
    let mut pieces = Vec::new();
    let mut r = Reader { b: &bytes, at: 0 };
    while !r.done() {
        let (field, wire) = r.key().ok_or_else(|| bad("truncated field key"))?;
        if field == 1 && wire == 2 {
            let msg = r.bytes().ok_or_else(|| bad("truncated piece"))?;
            let (mut text, mut score, mut ty) = (None, 0f32, NORMAL);
            let mut p = Reader { b: msg, at: 0 };
            while !p.done() {
                let (f, w) = p.key().ok_or_else(|| bad("truncated piece field"))?;
                match (f, w) {
                    (1, 2) => {
                        let s = p.bytes().ok_or_else(|| bad("truncated piece text"))?;
                        text = Some(
                            String::from_utf8(s.to_vec())
                                .map_err(|_| bad("a piece is not UTF-8"))?,
                        );
                    }
                    (2, 5) => {
                        let s = p.fixed32().ok_or_else(|| bad("truncated score"))?;
                        score = f32::from_le_bytes(s);
                    }
                    (3, 0) => ty = p.varint().ok_or_else(|| bad("truncated type"))? as i32,
                    (_, w) => p.skip(w).ok_or_else(|| bad("truncated piece field"))?,
                }
            }
            pieces.push((text.ok_or_else(|| bad("a piece without text"))?, score, ty));
        } else {
            r.skip(wire).ok_or_else(|| bad("truncated field"))?;
        }
    }
    if pieces.is_empty() {
        return Err(bad("no pieces"));
    }
    Ok(pieces)
}

/// A protobuf wire-format reader over one message's bytes.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u64, u64)> {
        let k = self.varint()?;
        Some((k >> 3, k & 7))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    fn fixed32(&mut self) -> Option<[u8; 4]> {
        self.take(4)?.try_into().ok()
    }

    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_foreign_file_is_a_named_error() {
        let dir = std::env::temp_dir().join(format!("qlora-spm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.model");
        // A piece field whose length runs past the end.
        std::fs::write(&path, [0x0a, 0x40, 0x0a]).unwrap();
        let e = read_pieces(&path).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.model") && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&path, b"{\"not\": \"protobuf\"}").unwrap();
        assert!(read_pieces(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
