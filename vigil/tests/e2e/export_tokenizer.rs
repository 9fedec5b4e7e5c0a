//! `vigil export-tokenizer`'s folder gives the ids the server's `/tokenize` gives.
//!
//! `vigil export-tokenizer`: the exported folder, loaded by Hugging Face's own `tokenizers`
//! crate (what aiperf's and guidellm's `--tokenizer DIR` load, through transformers), gives the
//! ids the running server's `/tokenize` gives, on strings that trip tokenizers up.

use crate::common;

use std::process::Command;

use common::{http_post, require_model, Vigil, VIGIL};
use serde_json::{json, Value};

const TRICKY: &[&str] = &[
    "Hello, world!",
    "  leading and trailing spaces  ",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "Unicode: naïve café, Ærøskøbing, Zürich, 東京, Москва, العربية",
    "emoji 🦀🚀👩‍👩‍👧‍👦 and flags 🇫🇷",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n\ttabs\r\nand CRLF",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|> in the middle <|endoftext|>",
    "",
    "a",
];

#[test]
fn the_exported_tokenizer_gives_the_servers_token_ids() {
    let model = require_model();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VIGIL)
        .args(["export-tokenizer", model])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tokenizer = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json"))
        .expect("tokenizers loads the exported tokenizer.json");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert!(
        config["chat_template"]
            .as_str()
            .is_some_and(|t| t.contains("<|im_start|>")),
        "{config}"
    );
    assert_eq!(config["eos_token"], "<|im_end|>", "{config}");
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    let special: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("special_tokens_map.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(special["eos_token"], config["eos_token"]);

    let v = Vigil::serve(&["--served-model-name", "smol"]);
    for text in TRICKY {
        let (status, body) = http_post(
            &v.url("/tokenize"),
            json!({"prompt": text}).to_string().as_bytes(),
            &[],
        );
        assert_eq!(status, 200, "{body}");
        let served: Vec<u32> =
            serde_json::from_value(serde_json::from_str::<Value>(&body).unwrap()["tokens"].clone())
                .unwrap();
        let exported = tokenizer.encode(*text, true).unwrap();
        assert_eq!(exported.get_ids(), served.as_slice(), "{text:?}");
        let decoded = tokenizer.decode(&served, false).unwrap();
        assert_eq!(decoded, *text, "{text:?} decodes back");
    }
}
