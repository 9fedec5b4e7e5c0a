//! The token embedding table, kept as the file stores it and dequantized per lookup.
//!
//! The token embedding table, kept as the file stores it: a row is dequantized when a token
//! looks it up, as llama.cpp's `get_rows` does. For a GGUF whose table is Q8_0 that is 30 MB
//! instead of 113 MB of f32 for the default model, with the same values.

use model::{dequantize, GgmlType};
use model::{names, LoadError, WeightSource};

pub(super) enum Embedding {
    /// f32 rows, from sources that keep the table in f32 (or that offer it only so).
    F32 { rows: Vec<f32>, width: usize },
    /// The file's blocks, `row_bytes` per row.
    Blocks {
        ggml_type: GgmlType,
        bytes: Vec<u8>,
        row_bytes: usize,
    },
}

impl Embedding {
    /// The `[vocab, width]` table of `w`.
    pub(super) fn load(
        w: &dyn WeightSource,
        vocab: usize,
        width: usize,
    ) -> Result<Embedding, LoadError> {
        if let Some(t) = w.encoded(names::EMBED, &[vocab, width])? {
            if let Some(row_bytes) = t.ggml_type.bytes_for(width as u64) {
                return Ok(Embedding::Blocks {
                    ggml_type: t.ggml_type,
                    bytes: t.bytes.into_owned(),
                    row_bytes: row_bytes as usize,
                });
            }
        }
        let rows = w.tensor(names::EMBED, &[vocab, width])?.data;
        Ok(Embedding::F32 { rows, width })
    }

    /// Token `token`'s row, into `out` (the table's width).
    pub(super) fn row(&self, token: usize, out: &mut [f32]) {
        match self {
            Embedding::F32 { rows, width } => {
                out.copy_from_slice(&rows[token * width..(token + 1) * width])
            }
            Embedding::Blocks {
                ggml_type,
                bytes,
                row_bytes,
            } => dequantize(
                *ggml_type,
                &bytes[token * row_bytes..(token + 1) * row_bytes],
                out,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[3, 64]` table in Q8_0, offered encoded or (`offer_blocks` false) only as f32.
    struct Table {
        bytes: Vec<u8>,
        offer_blocks: bool,
    }

    impl Table {
        fn new(offer_blocks: bool) -> Table {
            let mut bytes = Vec::new();
            for block in 0..6u8 {
                let d = half::f16::from_f32(0.01 * (block + 1) as f32);
                bytes.extend(d.to_le_bytes());
                bytes.extend((0..32u8).map(|i| (i * 7 + block).wrapping_sub(100)));
            }
            Table {
                bytes,
                offer_blocks,
            }
        }
    }

    impl WeightSource for Table {
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<model::HostTensor, LoadError> {
            assert_eq!((name, shape), (names::EMBED, &[3, 64][..]));
            let mut data = vec![0f32; 3 * 64];
            dequantize(GgmlType::Q8_0, &self.bytes, &mut data);
            Ok(model::HostTensor {
                shape: shape.to_vec(),
                data,
            })
        }
        fn has(&self, name: &str) -> bool {
            name == names::EMBED
        }
        fn encoded(
            &self,
            _name: &str,
            _shape: &[usize],
        ) -> Result<Option<model::EncodedTensor<'_>>, LoadError> {
            Ok(self.offer_blocks.then(|| model::EncodedTensor {
                ggml_type: GgmlType::Q8_0,
                bytes: self.bytes[..].into(),
            }))
        }
    }

    #[test]
    fn rows_looked_up_from_blocks_are_the_decoded_rows() {
        let decoded = Table::new(false)
            .tensor(names::EMBED, &[3, 64])
            .unwrap()
            .data;
        let blocks = Embedding::load(&Table::new(true), 3, 64).unwrap();
        let f32s = Embedding::load(&Table::new(false), 3, 64).unwrap();
        assert!(matches!(blocks, Embedding::Blocks { row_bytes: 68, .. }));
        assert!(matches!(f32s, Embedding::F32 { .. }));
        for token in 0..3 {
            let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
            blocks.row(token, &mut a);
            f32s.row(token, &mut b);
            assert_eq!(a, decoded[token * 64..(token + 1) * 64]);
            assert_eq!(b, a);
        }
    }
}
