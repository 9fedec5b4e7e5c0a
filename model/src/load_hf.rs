//! A Llama model from an HF folder: config, safetensors (memory-mapped) and tokenizer.
//!
//! A Llama model from an HF folder: `config.json`, `model.safetensors` or shards listed in
//! `model.safetensors.index.json` (memory-mapped), and the tokenizer files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::check_shape;
use crate::tokenizer::Tokenizer;
use crate::{HostTensor, LlamaConfig, LoadError, Model, WeightSource};

pub(crate) fn load(dir: &Path) -> Result<Model, LoadError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| LoadError::io(&config_path, e))?;
    let config = LlamaConfig::from_hf_json(&config_path, &text)?;
    let weights = HfWeights::open(dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    Ok(Model {
        path: dir.to_owned(),
        config,
        weights: Box::new(weights),
        tokenizer,
    })
}

struct HfWeights {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl HfWeights {
    fn open(dir: &Path) -> Result<HfWeights, LoadError> {
        let index_path = dir.join("model.safetensors.index.json");
        let file_names: Vec<String> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LoadError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| LoadError::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LoadError::format(&index_path, "no weight_map"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
            names.sort();
            names.dedup();
            names
        } else {
            vec!["model.safetensors".to_owned()]
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, name) in file_names.iter().enumerate() {
            if name.contains('/') || name.contains("..") {
                return Err(LoadError::format(
                    &index_path,
                    format!("shard name {name:?} leaves the model folder"),
                ));
            }
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| LoadError::io(&path, e))?;
            // SAFETY: read-only map of a model file that is not modified while served.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(&path, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                LoadError::format(&path, format!("not a valid safetensors file: {e}"))
            })?;
            for name in st.names() {
                index.insert(name.to_owned(), i);
            }
            files.push((path, map));
        }
        Ok(HfWeights { files, index })
    }
}

impl WeightSource for HfWeights {
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        let first = || {
            self.files
                .first()
                .map(|(p, _)| p.clone())
                .unwrap_or_default()
        };
        let &i = self.index.get(name).ok_or_else(|| LoadError::Tensor {
            file: first(),
            tensor: name.into(),
            what: "missing".into(),
        })?;
        let (path, map) = &self.files[i];
        let st =
            SafeTensors::deserialize(map).map_err(|e| LoadError::format(path, e.to_string()))?;
        let view = st.tensor(name).map_err(|e| LoadError::Tensor {
            file: path.clone(),
            tensor: name.into(),
            what: e.to_string(),
        })?;
        check_shape(path, name, view.shape(), shape)?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(LoadError::Tensor {
                    file: path.clone(),
                    tensor: name.into(),
                    what: format!("unsupported dtype {other:?} (F32, F16 and BF16 are supported)"),
                })
            }
        };
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }
}
