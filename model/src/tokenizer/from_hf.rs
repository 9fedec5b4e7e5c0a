//! A tokenizer from an HF folder, with its special tokens, chat template and stop tokens.
//!
//! A tokenizer from an HF folder: `tokenizer.json`, with special tokens and the chat template
//! from `tokenizer_config.json` and stop tokens from `generation_config.json`.

use std::path::Path;

use serde_json::Value;

use super::{ChatTemplate, Tokenizer};
use crate::error::LoadError;

fn read_json(path: &Path) -> Result<Option<Value>, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LoadError::format(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::io(path, e)),
    }
}

/// A special token given as a string or as `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

pub(super) fn load(dir: &Path) -> Result<Tokenizer, LoadError> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(LoadError::format(
            &tok_path,
            "missing (the model folder needs a tokenizer.json)",
        ));
    }
    let inner = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| LoadError::format(&tok_path, e.to_string()))?;
    let mut tok = Tokenizer::new(inner);

    let config_path = dir.join("tokenizer_config.json");
    if let Some(config) = read_json(&config_path)? {
        tok.bos_token = token_string(config.get("bos_token"));
        tok.eos_token = token_string(config.get("eos_token"));
        tok.add_bos = config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let template = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_owned),
            _ => None,
        };
        if let Some(src) = template {
            tok.chat_template = Some(ChatTemplate::new(&src).map_err(|e| {
                LoadError::format(&config_path, format!("chat_template does not compile: {e}"))
            })?);
        }
    }
    let chat_template_path = dir.join("chat_template.jinja");
    if tok.chat_template.is_none() {
        if let Ok(src) = std::fs::read_to_string(&chat_template_path) {
            tok.chat_template = Some(
                ChatTemplate::new(&src)
                    .map_err(|e| LoadError::format(&chat_template_path, e.to_string()))?,
            );
        }
    }
    if let Some(eos) = tok.eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
        tok.eos_token_ids.push(eos);
    }
    if let Some(gen) = read_json(&dir.join("generation_config.json"))? {
        let ids: Vec<u32> = match gen.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        for id in ids {
            if !tok.eos_token_ids.contains(&id) {
                tok.eos_token_ids.push(id);
            }
        }
    }
    Ok(tok)
}
