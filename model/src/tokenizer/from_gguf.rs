//! A `tokenizers` tokenizer rebuilt from a GGUF's tokenizer metadata.
//!
//! A tokenizer rebuilt from GGUF metadata: the `gpt2` (byte-level BPE) model with its merges,
//! the pre-tokenizer named by `tokenizer.ggml.pre`, and control tokens as special tokens. It is
//! built as a `tokenizer.json` document, so the result is exactly what HF would load.

use serde_json::{json, Map, Value};

use super::{ChatTemplate, Tokenizer};
use crate::error::LoadError;
use crate::gguf::{GgufFile, MetaValue};

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Llama 3's pre-tokenizer split pattern (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn load(file: &GgufFile) -> Result<Tokenizer, LoadError> {
    let path = &file.path;
    let bad = |what: String| LoadError::format(path, what);
    let model = file
        .meta("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap_or("");
    if model != "gpt2" {
        return Err(bad(format!(
            "unsupported tokenizer.ggml.model {model:?}: Vigil reads byte-level BPE (\"gpt2\") tokenizers"
        )));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?;
    let merges = strings(file, "tokenizer.ggml.merges")?.unwrap_or_default();
    let types: Vec<u64> = match file
        .meta("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
    {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(bad(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (token, ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(token.clone(), json!(id));
        if *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = file
        .meta("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        other => return Err(bad(format!("unsupported tokenizer.ggml.pre {other:?}"))),
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": Value::Object(vocab), "merges": merges,
        },
    });
    let inner = tokenizers::Tokenizer::from_bytes(doc.to_string().as_bytes())
        .map_err(|e| bad(format!("building the tokenizer from tokenizer.ggml.*: {e}")))?;

    let id = |key: &str| file.meta(key).and_then(MetaValue::as_u64).map(|v| v as u32);
    let token_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
    let mut tok = Tokenizer::new(inner);
    tok.bos_token = token_of(id("tokenizer.ggml.bos_token_id"));
    tok.eos_token = token_of(id("tokenizer.ggml.eos_token_id"));
    tok.eos_token_ids = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
        if !tok.eos_token_ids.contains(&eot) {
            tok.eos_token_ids.push(eot);
        }
    }
    tok.add_bos = file
        .meta("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(false);
    if let Some(src) = file
        .meta("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
    {
        tok.chat_template = Some(
            ChatTemplate::new(src)
                .map_err(|e| bad(format!("tokenizer.chat_template does not compile: {e}")))?,
        );
    }
    Ok(tok)
}

fn strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>, LoadError> {
    let Some(v) = file.meta(key) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| LoadError::format(&file.path, format!("{key} is not an array")))?;
    arr.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| LoadError::format(&file.path, format!("{key} holds a non-string")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
