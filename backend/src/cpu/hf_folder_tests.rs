//! HF folders written here from the tiny random model: single file and sharded, f32 and bf16.

use std::path::Path;

use half::bf16;
use safetensors::{Dtype, View};

use super::{CpuBackend, CpuOptions, WeightFormat};
use crate::{Backend, LogitsFor, SeqInput};
use model::testing::{random_weights, tiny_config, MemWeights};
use model::{LoadError, Model};

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.bytes[..]).into()
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn write_folder(dir: &Path, weights: &MemWeights, dtype: Dtype, shards: usize) {
    let c = tiny_config();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim, "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        model::testing::byte_tokenizer_json(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "A"}, "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [66, 67]}"#,
    )
    .unwrap();
    let mut names: Vec<&String> = weights.0.keys().collect();
    names.sort();
    let raws: Vec<(String, Raw)> = names
        .iter()
        .map(|n| {
            let t = &weights.0[*n];
            let bytes = match dtype {
                Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::BF16 => t
                    .data
                    .iter()
                    .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => unreachable!(),
            };
            (
                (*n).clone(),
                Raw {
                    dtype,
                    shape: t.shape.clone(),
                    bytes,
                },
            )
        })
        .collect();
    let per = raws.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in raws.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_owned()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let data = safetensors::serialize(chunk.iter().map(|(n, r)| (n.clone(), r)), None).unwrap();
        std::fs::write(dir.join(&file), data).unwrap();
        for (n, _) in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

fn logits(config: &model::LlamaConfig, weights: &dyn model::WeightSource) -> Vec<f32> {
    let options = CpuOptions {
        block_size: 4,
        num_blocks: 4,
        weight_format: WeightFormat::F32,
        kv_dtype: None,
    };
    let mut be = CpuBackend::from_weights(config, weights, &options).unwrap();
    let tokens: Vec<u32> = (0..10).map(|i| i * 25).collect();
    be.forward(&[SeqInput {
        tokens: &tokens,
        start_pos: 0,
        block_table: &[0, 1, 2],
        logits_for: LogitsFor::All,
    }])
    .unwrap()
    .data
}

#[test]
fn hf_folders_load_single_and_sharded_f32_and_bf16() {
    let weights = random_weights(&tiny_config(), 11);
    let want = logits(&tiny_config(), &weights);
    for (dtype, shards, tolerance) in [
        (Dtype::F32, 1, 0.0),
        (Dtype::F32, 3, 0.0),
        (Dtype::BF16, 2, 0.05),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &weights, dtype, shards);
        let model = Model::load(dir.path()).unwrap();
        assert_eq!(model.config, tiny_config());
        let got = logits(&model.config, model.weights.as_ref());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= tolerance * scale,
            "{dtype:?} x{shards}: {err} vs {scale}"
        );
        let tok = &model.tokenizer;
        assert_eq!(
            tok.decode(&tok.encode("héllo", false).unwrap(), false)
                .unwrap(),
            "héllo"
        );
        assert_eq!(tok.eos_token_ids, vec![b'A' as u32, 66, 67]);
        assert!(tok.chat_template.is_some());
    }
}

#[test]
fn broken_folders_name_the_file_and_tensor() {
    let weights = random_weights(&tiny_config(), 12);
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &weights, Dtype::F32, 1);
    // A tensor of the wrong shape.
    let mut bad = MemWeights(weights.0.clone());
    let name = "model.layers.1.mlp.up_proj.weight".to_owned();
    let t = bad.0.get_mut(&name).unwrap();
    t.shape = vec![64, 128];
    write_folder(dir.path(), &bad, Dtype::F32, 1);
    let model = Model::load(dir.path()).unwrap();
    let options = CpuOptions {
        block_size: 4,
        num_blocks: 4,
        weight_format: WeightFormat::F32,
        kv_dtype: None,
    };
    let err = CpuBackend::new(&model, &options).err().unwrap().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains(&name) && err.contains("shape mismatch"),
        "{err}"
    );
    // A missing tensor.
    bad.0.remove(&name);
    write_folder(dir.path(), &bad, Dtype::F32, 1);
    let model = Model::load(dir.path()).unwrap();
    let err = CpuBackend::new(&model, &options).err().unwrap().to_string();
    assert!(err.contains(&name) && err.contains("missing"), "{err}");
    // A truncated safetensors file.
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(
        matches!(err, LoadError::Format { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );
    // No tokenizer.
    write_folder(dir.path(), &weights, Dtype::F32, 1);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = Model::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}
