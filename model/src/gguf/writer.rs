//! A GGUF writer: metadata and encoded tensors into a file llama.cpp and our reader read.

use super::quant::GgmlType;

/// Writes GGUF files: metadata and tensors of any encoding, laid out as llama.cpp does.
///
/// For tests and for files made up for profiling (a model's shapes with random weights): it
/// writes the header, metadata and tensor table of GGUF version 3, tensors aligned to 32 bytes.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<u8>,
    kv_count: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    tensor_count: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    /// Adds metadata `key` as an unsigned 32-bit integer.
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.kv_count += 1;
        self
    }
    /// Adds metadata `key` as a 32-bit float.
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(6u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.kv_count += 1;
        self
    }
    /// Adds metadata `key` as a string.
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(8u32.to_le_bytes());
        put_str(&mut self.kv, v);
        self.kv_count += 1;
        self
    }
    /// Adds metadata `key` as an array of strings.
    pub fn strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
        self.kv_count += 1;
        self
    }
    /// Adds metadata `key` as an array of signed 32-bit integers.
    pub fn i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
        put_str(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
        self.kv_count += 1;
        self
    }
    /// Adds a tensor with raw (already encoded) bytes; `dims` innermost first, as GGUF stores them.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, bytes: &[u8]) -> &mut Self {
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend((ty as u32).to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        self.tensor_count += 1;
        self
    }
    /// Adds an F32 tensor.
    pub fn f32_tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, &bytes)
    }
    /// The file's bytes.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}
