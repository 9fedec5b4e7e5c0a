//! Tokenizers rebuilt from GGUF metadata: merges, special tokens, streaming decode, refusals.

use std::path::Path;

use crate::gguf::GgufFile;
use crate::GgufWriter as Writer;

use super::*;

fn tiny_gguf_tokenizer() -> Tokenizer {
    let mut tokens = crate::testing::byte_level_alphabet();
    tokens.push("ab".into()); // 256, from the merge "a b"
    tokens.push("Ġab".into()); // 257, from "Ġ ab"
    tokens.push("<|im_start|>".into()); // 258
    tokens.push("<|im_end|>".into()); // 259
    let mut types = vec![1i32; tokens.len()];
    types[258] = 3;
    types[259] = 3;
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let bytes = Writer::default()
        .str("general.architecture", "llama")
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .strs("tokenizer.ggml.tokens", &refs)
        .i32s("tokenizer.ggml.token_type", &types)
        .strs("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .u32("tokenizer.ggml.bos_token_id", 258)
        .u32("tokenizer.ggml.eos_token_id", 259)
        .str("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
        .finish();
    let file = GgufFile::from_bytes(Path::new("tiny.gguf"), bytes).unwrap();
    Tokenizer::from_gguf(&file).unwrap()
}

#[test]
fn gguf_byte_level_bpe_merges_splits_digits_and_keeps_special_tokens() {
    let tok = tiny_gguf_tokenizer();
    let ids = tok.encode("ab ab", false).unwrap();
    assert_eq!(ids, vec![256, 257]);
    // Digits are split one by one (SmolLM's pre-tokenizer); bytes round-trip.
    let ids = tok.encode("12é", false).unwrap();
    assert_eq!(
        ids[..2],
        [tok.token_to_id("1").unwrap(), tok.token_to_id("2").unwrap()]
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), "12é");
    // Control tokens written in text are single special tokens, skipped on request.
    let ids = tok.encode("<|im_start|>ab<|im_end|>", false).unwrap();
    assert_eq!(ids, vec![258, 256, 259]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "ab");
    assert_eq!(tok.eos_token_ids, vec![259]);
    assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
    let chat = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], false)
        .unwrap();
    assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n");
}

#[test]
fn decode_stream_holds_back_partial_utf8() {
    let tok = std::sync::Arc::new(tiny_gguf_tokenizer());
    let ids = tok.encode("é!", false).unwrap();
    assert_eq!(ids.len(), 3, "é is two byte tokens");
    let mut stream = DecodeStream::new(tok, false);
    assert_eq!(stream.step(ids[0]).unwrap(), None);
    assert_eq!(stream.step(ids[1]).unwrap().as_deref(), Some("é"));
    assert_eq!(stream.step(ids[2]).unwrap().as_deref(), Some("!"));
}

#[test]
fn unsupported_tokenizers_are_named() {
    let bytes = Writer::default()
        .str("tokenizer.ggml.model", "llama")
        .strs("tokenizer.ggml.tokens", &["a"])
        .finish();
    let file = GgufFile::from_bytes(Path::new("spm.gguf"), bytes).unwrap();
    let err = Tokenizer::from_gguf(&file).unwrap_err().to_string();
    assert!(
        err.contains("spm.gguf") && err.contains("\"llama\""),
        "{err}"
    );
}
