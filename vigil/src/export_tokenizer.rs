//! `vigil export-tokenizer`: the served model's tokenizer as a Hugging Face folder.
//!
//! `vigil export-tokenizer MODEL DIR`: the served model's tokenizer as a Hugging Face tokenizer
//! folder (`tokenizer.json`, `tokenizer_config.json` with the chat template and special tokens,
//! `special_tokens_map.json`), so that clients that count tokens with an HF tokenizer (aiperf's
//! and guidellm's `--tokenizer DIR`) work offline and for a GGUF, with the ids Vigil uses.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use model::{Model, Tokenizer};

/// Writes the tokenizer of the model at `model` into `dir` (created if missing).
pub(crate) fn run(model: &Path, dir: &Path) -> anyhow::Result<()> {
    let loaded = Model::load(model).with_context(|| format!("loading {}", model.display()))?;
    let max_len = loaded.config.max_position_embeddings;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, value) in files(&loaded.tokenizer, max_len)? {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The folder's files: name and content.
fn files(tokenizer: &Tokenizer, max_len: usize) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let mut json: Value = serde_json::from_str(&tokenizer.to_json()?)?;
    // Vigil prepends BOS itself when the model wants it; an HF tokenizer does it in its post
    // processor, so the exported file says so.
    if let Some((bos, id)) = tokenizer
        .bos_token
        .as_deref()
        .filter(|_| tokenizer.add_bos)
        .and_then(|b| Some((b, tokenizer.token_to_id(b)?)))
    {
        let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
        json["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": [special(bos), seq("A")],
            "pair": [special(bos), seq("A"), special(bos), seq("B")],
            "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}},
        });
    }
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "add_bos_token": tokenizer.add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
    });
    let mut special = json!({});
    for (key, token) in [
        ("bos_token", &tokenizer.bos_token),
        ("eos_token", &tokenizer.eos_token),
    ] {
        if let Some(token) = token {
            config[key] = json!(token);
            special[key] = json!(token);
        }
    }
    if let Some(template) = &tokenizer.chat_template {
        config["chat_template"] = json!(template.source());
    }
    Ok(vec![
        ("tokenizer.json", json),
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special),
    ])
}
