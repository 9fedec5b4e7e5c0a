//! Benchmark prompts: random token ids or ShareGPT conversations.
//!
//! Benchmark prompts: random token ids (exact input and output lengths, `ignore_eos`), or
//! ShareGPT-format conversations (first human turn as the prompt).

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::BenchServeArgs;

pub(super) struct BenchRequest {
    pub json: String,
    pub prompt_len: usize,
}

/// Token ids of random words, `len` of them, through the server's own `/tokenize` (so they
/// are valid for whatever vocabulary it serves).
fn random_ids(base: &str, rng: &mut StdRng, len: usize) -> anyhow::Result<Vec<u32>> {
    let mut words = String::new();
    loop {
        for _ in 0..len.max(16) {
            let n = rng.random_range(2..8);
            let word: String = (0..n)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            words.push_str(&word);
            words.push(' ');
        }
        let body = json!({"prompt": words, "add_special_tokens": false}).to_string();
        let mut resp = ureq::post(&format!("{}/tokenize", base.trim_end_matches('/')))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .context("POST /tokenize")?;
        let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
        let ids: Vec<u32> = v["tokens"]
            .as_array()
            .context("/tokenize gave no tokens")?
            .iter()
            .filter_map(|t| t.as_u64())
            .map(|t| t as u32)
            .collect();
        if ids.len() >= len {
            return Ok(ids[..len].to_vec());
        }
    }
}

pub(super) fn build(
    args: &BenchServeArgs,
    base: &str,
    model: &str,
) -> anyhow::Result<Vec<BenchRequest>> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let chat = args.endpoint.contains("chat");
    match args.dataset_name.as_str() {
        "random" => {
            if chat {
                bail!("--dataset-name random sends token ids and needs --endpoint /v1/completions");
            }
            (0..args.num_prompts)
                .map(|_| {
                    let ids = random_ids(base, &mut rng, args.random_input_len)?;
                    let body = json!({"model": model, "prompt": ids, "max_tokens": args.random_output_len,
                                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
                    Ok(BenchRequest { json: body.to_string(), prompt_len: args.random_input_len })
                })
                .collect()
        }
        "sharegpt" => {
            let path = args
                .dataset_path
                .as_ref()
                .context("--dataset-name sharegpt needs --dataset-path")?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let data: Vec<serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a ShareGPT JSON list", path.display()))?;
            let prompts: Vec<String> = data
                .iter()
                .filter_map(|c| c["conversations"][0]["value"].as_str().map(str::to_owned))
                .filter(|p| !p.is_empty())
                .take(args.num_prompts)
                .collect();
            if prompts.is_empty() {
                bail!("{}: no conversations with a first turn", path.display());
            }
            Ok(prompts
                .into_iter()
                .map(|p| {
                    let prompt_len = p.split_whitespace().count();
                    let body = if chat {
                        json!({"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": args.random_output_len,
                               "stream": true, "stream_options": {"include_usage": true}})
                    } else {
                        json!({"model": model, "prompt": p, "max_tokens": args.random_output_len,
                               "stream": true, "stream_options": {"include_usage": true}})
                    };
                    BenchRequest { json: body.to_string(), prompt_len }
                })
                .collect())
        }
        other => bail!("--dataset-name {other:?}: random and sharegpt are supported"),
    }
}
