//! The GGUF container: header, metadata key/values, tensor infos, aligned tensor data.
//!
//! Every read is bounds-checked and every count is checked against the bytes left, so a
//! truncated or corrupted file is an error naming what was being read, never a panic or a huge
//! allocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::GgmlType;
use crate::error::LoadError;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Where a tensor's data is and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row length), as llama.cpp writes them.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file, its tensors still in the (memory-mapped) file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data: Bytes,
    data_start: usize,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile, LoadError> {
        let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the map is read-only; Vigil never writes model files while serving them.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        Self::parse(path, Bytes::Mapped(map))
    }

    /// Parses a GGUF image held in memory (tests and fuzzing).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<GgufFile, LoadError> {
        Self::parse(path, Bytes::Owned(bytes))
    }

    fn parse(path: &Path, data: Bytes) -> Result<GgufFile, LoadError> {
        let bad = |what: String| LoadError::Format {
            file: path.to_owned(),
            what,
        };
        let mut r = Cursor { buf: &data, pos: 0 };
        let magic = r
            .bytes(4)
            .map_err(|_| bad("file is shorter than a GGUF header".into()))?;
        if magic != MAGIC {
            return Err(bad(format!(
                "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = r.u32().map_err(|e| bad(format!("header: {e}")))?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "unsupported GGUF version {version} (2 and 3 are supported)"
            )));
        }
        let tensor_count = r.u64().map_err(|e| bad(format!("header: {e}")))?;
        let kv_count = r.u64().map_err(|e| bad(format!("header: {e}")))?;
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = r
                .string()
                .map_err(|e| bad(format!("metadata key #{i}: {e}")))?;
            let ty = r.u32().map_err(|e| bad(format!("metadata {key:?}: {e}")))?;
            let value = r
                .value(ty, 0)
                .map_err(|e| bad(format!("metadata {key:?}: {e}")))?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for i in 0..tensor_count {
            let name = r
                .string()
                .map_err(|e| bad(format!("tensor info #{i}: {e}")))?;
            let info = r
                .tensor_info(name.clone())
                .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
            tensors.push(info);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| bad(format!("general.alignment {v:?} is not a power of two")))?,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file = GgufFile {
            path: path.to_owned(),
            version,
            metadata,
            tensors,
            data,
            data_start: data_start as usize,
        };
        for t in &file.tensors {
            file.tensor_bytes(t)?;
        }
        Ok(file)
    }

    /// The raw bytes of tensor `t`, checked to lie inside the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8], LoadError> {
        let len = t
            .ggml_type
            .bytes_for(t.n_elements())
            .ok_or_else(|| LoadError::Tensor {
                file: self.path.clone(),
                tensor: t.name.clone(),
                what: format!(
                    "{} elements is not a whole number of {:?} blocks",
                    t.n_elements(),
                    t.ggml_type
                ),
            })?;
        let start = (self.data_start as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.data.len() as u64 => {
                Ok(&self.data[s as usize..e as usize])
            }
            _ => Err(LoadError::Tensor {
                file: self.path.clone(),
                tensor: t.name.clone(),
                what: format!(
                    "truncated: needs bytes {}..{} of the data section, the file has {}",
                    t.offset,
                    t.offset.saturating_add(len),
                    (self.data.len() as u64).saturating_sub(self.data_start as u64)
                ),
            }),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Deepest nesting of arrays accepted (GGUF uses one level; more is a corrupt file).
const MAX_ARRAY_DEPTH: u32 = 4;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: wanted {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_item_bytes` each, checked against the bytes left.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|n| n.saturating_mul(min_item_bytes.max(1)) <= self.remaining());
        fits.ok_or_else(|| format!("count {n} at offset {} exceeds the file", self.pos - 8))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.count(1)?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("string at offset {} is not UTF-8", self.pos - n))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("bool byte {b} is neither 0 nor 1")),
            },
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err("arrays nested too deeply".into());
                }
                let item_ty = self.u32()?;
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }

    fn tensor_info(&mut self, name: String) -> Result<TensorInfo, String> {
        let n_dims = self.u32()?;
        if !(1..=4).contains(&n_dims) {
            return Err(format!("{n_dims} dimensions (1 to 4 are valid)"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        if dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .is_none()
        {
            return Err(format!("dimensions {dims:?} overflow"));
        }
        let ty = self.u32()?;
        let ggml_type =
            GgmlType::from_id(ty).ok_or_else(|| format!("unknown quantization type {ty}"))?;
        let offset = self.u64()?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter as Writer;

    fn sample() -> Vec<u8> {
        Writer::default()
            .str("general.architecture", "llama")
            .u32("llama.block_count", 2)
            .f32("llama.rope.freq_base", 10000.0)
            .strs("tokenizer.ggml.tokens", &["a", "b"])
            .f32_tensor("x", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .f32_tensor("y", &[2], &[7.0, 8.0])
            .finish()
    }

    #[test]
    fn parses_what_the_writer_writes() {
        let f = GgufFile::from_bytes(Path::new("t.gguf"), sample()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(
            f.meta("general.architecture").and_then(MetaValue::as_str),
            Some("llama")
        );
        assert_eq!(
            f.meta("llama.block_count").and_then(MetaValue::as_u64),
            Some(2)
        );
        assert_eq!(
            f.meta("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[_]>::len),
            Some(2)
        );
        let y = f.tensor("y").unwrap();
        assert_eq!(
            f.tensor_bytes(y).unwrap(),
            [7.0f32.to_le_bytes(), 8.0f32.to_le_bytes()].concat()
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let r = GgufFile::from_bytes(Path::new("t.gguf"), bytes[..len].to_vec());
            assert!(r.is_err(), "truncated to {len} bytes parsed");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // A deterministic fuzz loop: flip bytes and overwrite 8-byte windows with extreme values.
        let bytes = sample();
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let mut b = bytes.clone();
            let at = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[at] ^= (next() % 255 + 1) as u8,
                1 => {
                    let v = [u64::MAX, 1 << 40, 0, 5][(next() % 4) as usize];
                    for (i, x) in v.to_le_bytes().iter().enumerate() {
                        if at + i < b.len() {
                            b[at + i] = *x;
                        }
                    }
                }
                _ => b.truncate(at),
            }
            let _ = GgufFile::from_bytes(Path::new("t.gguf"), b);
        }
    }

    #[test]
    fn unknown_quant_types_and_architectures_are_named() {
        let bytes = Writer::default()
            .tensor("blk.0.attn_q.weight", &[32], GgmlType::F32, &[0; 128])
            .finish();
        // Patch the type id (u32 after the dims) to 13 (Q5_K).
        let name_end = bytes
            .windows(19)
            .position(|w| w == b"blk.0.attn_q.weight")
            .unwrap()
            + 19;
        let mut patched = bytes.clone();
        patched[name_end + 12..name_end + 16].copy_from_slice(&13u32.to_le_bytes());
        let err = GgufFile::from_bytes(Path::new("q.gguf"), patched)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("q.gguf")
                && err.contains("blk.0.attn_q.weight")
                && err.contains("quantization type 13"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_what_was_read() {
        let mut bytes = sample();
        bytes.truncate(bytes.len() - 4);
        let err = GgufFile::from_bytes(Path::new("t.gguf"), bytes)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("t.gguf") && err.contains("\"y\"") && err.contains("truncated"),
            "{err}"
        );
        let err = GgufFile::from_bytes(Path::new("t.gguf"), b"GGML\x03\0\0\0".to_vec())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
    }
}
