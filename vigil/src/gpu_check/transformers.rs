//! The GPU benchmark beside Hugging Face `transformers` in the same run.
//!
//! The same benchmark with Hugging Face `transformers` in the same run, when the machine has
//! PyTorch and transformers: vigil exports the weights it loaded as an HF folder (config.json and
//! bf16 safetensors, so GGUF needs no `gguf` Python package), runs `transformers_bench.py`, and
//! compares aggregate generation throughput (prefill and decode of the same prompts) per batch.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::bench::{BenchRow, BATCHES, NEW_TOKENS, PROMPT_LEN};
use super::report::Report;
use model::names::{self, LayerTensor};
use model::{LlamaConfig, Model, RopeScaling};

const SCRIPT: &str = include_str!("transformers_bench.py");

/// Batch-64 aggregate decode must reach this multiple of transformers' (the CUDA backend's
/// throughput target).
const BATCH64_TARGET: f64 = 3.0;

/// `config.json` for transformers' LlamaForCausalLM.
pub(crate) fn hf_config(c: &LlamaConfig) -> serde_json::Value {
    let rope_scaling = match &c.rope_scaling {
        None => serde_json::Value::Null,
        Some(RopeScaling::Linear { factor }) => {
            serde_json::json!({"rope_type": "linear", "factor": factor})
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": *original_max_position_embeddings as u64,
        }),
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    })
}

/// Writes `model`'s weights as an HF folder: `config.json` and `model.safetensors` (bf16).
pub(crate) fn export_hf(model: &Model, dir: &Path) -> anyhow::Result<()> {
    let c = &model.config;
    let w = model.weights.as_ref();
    let mut names_shapes: Vec<(String, Vec<usize>)> = vec![
        (names::EMBED.to_owned(), vec![c.vocab_size, c.hidden_size]),
        (names::FINAL_NORM.to_owned(), vec![c.hidden_size]),
    ];
    if !c.tie_word_embeddings && w.has(names::LM_HEAD) {
        names_shapes.push((names::LM_HEAD.to_owned(), vec![c.vocab_size, c.hidden_size]));
    }
    let (h, hd) = (c.hidden_size, c.head_dim);
    for l in 0..c.num_hidden_layers {
        for (t, shape) in [
            (LayerTensor::AttnNorm, vec![h]),
            (LayerTensor::Q, vec![c.num_attention_heads * hd, h]),
            (LayerTensor::K, vec![c.num_key_value_heads * hd, h]),
            (LayerTensor::V, vec![c.num_key_value_heads * hd, h]),
            (LayerTensor::O, vec![h, c.num_attention_heads * hd]),
            (LayerTensor::FfnNorm, vec![h]),
            (LayerTensor::Gate, vec![c.intermediate_size, h]),
            (LayerTensor::Up, vec![c.intermediate_size, h]),
            (LayerTensor::Down, vec![h, c.intermediate_size]),
        ] {
            names_shapes.push((t.hf_name(l), shape));
        }
    }
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in names_shapes {
        let t = w.tensor(&name, &shape)?;
        let bytes = t
            .data
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        data.push((name, shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::BF16, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(meta), &dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&hf_config(c))?,
    )?;
    Ok(())
}

/// Runs transformers on the same prompts and compares with `ours`.
pub(crate) fn run(model: &Model, python: &str, ours: &[BenchRow], report: &mut Report) {
    let dir = std::env::temp_dir().join(format!("vigil-check-gpu-{}", std::process::id()));
    let result = (|| -> anyhow::Result<Option<Vec<(usize, f64)>>> {
        std::fs::create_dir_all(&dir)?;
        export_hf(model, &dir)?;
        let script = dir.join("transformers_bench.py");
        std::fs::write(&script, SCRIPT)?;
        let batches: Vec<String> = BATCHES.iter().map(|b| b.to_string()).collect();
        let out = Command::new(python)
            .arg(&script)
            .arg(&dir)
            .arg(batches.join(","))
            .arg(PROMPT_LEN.to_string())
            .arg(NEW_TOKENS.to_string())
            .arg(model.config.vocab_size.to_string())
            .output()?;
        match out.status.code() {
            Some(3) | Some(4) => {
                println!(
                    "SKIP transformers comparison: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return Ok(None);
            }
            Some(0) => {}
            _ => anyhow::bail!(
                "{python} transformers_bench.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        let mut theirs = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let (Some(b), Some(s), Some(t)) = (
                v["batch"].as_u64(),
                v["seconds"].as_f64(),
                v["tokens"].as_f64(),
            ) {
                theirs.push((b as usize, t / s));
            } else {
                println!("transformers: {line}");
            }
        }
        Ok(Some(theirs))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let theirs = match result {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => return report.error("transformers comparison", e),
    };
    println!(
        "{:>6} {:>18} {:>18} {:>8}",
        "batch", "vigil gen tok/s", "transformers tok/s", "ratio"
    );
    for row in ours {
        let Some(&(_, t)) = theirs.iter().find(|(b, _)| *b == row.batch) else {
            continue;
        };
        // Aggregate generation: the same prompts prefilled, then NEW_TOKENS tokens each.
        let v = (row.batch * NEW_TOKENS) as f64 / (row.prefill + row.decode).as_secs_f64();
        println!("{:>6} {:>18.0} {:>18.0} {:>7.2}x", row.batch, v, t, v / t);
        if row.batch == 64 {
            report.check(
                "batch-64 generation >= 3x transformers",
                v / t >= BATCH64_TARGET,
                format!("{:.2}x ({v:.0} vs {t:.0} tok/s)", v / t),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exported folder loads back through our own HF loader with the same config and
    /// weights (to bf16), which is what transformers reads.
    #[test]
    fn an_exported_folder_loads_back_with_the_same_weights() {
        let config = LlamaConfig {
            tie_word_embeddings: false,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            ..model::testing::tiny_config()
        };
        let weights = model::testing::random_weights(&config, 5);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            model::testing::byte_tokenizer_json(),
        )
        .unwrap();
        let model = Model {
            path: dir.path().to_owned(),
            config: config.clone(),
            weights: Box::new(model::testing::random_weights(&config, 5)),
            tokenizer: model::testing::byte_tokenizer(),
        };
        export_hf(&model, dir.path()).unwrap();
        let back = Model::load(dir.path()).unwrap();
        assert_eq!(back.config, config);
        for name in [names::EMBED, names::LM_HEAD, &LayerTensor::K.hf_name(1)] {
            let shape = weights.0[name].shape.clone();
            let got = back.weights.tensor(name, &shape).unwrap().data;
            let want = super::super::report::round_bf16(&weights.0[name].data);
            assert_eq!(got, want, "{name}");
        }
    }
}
