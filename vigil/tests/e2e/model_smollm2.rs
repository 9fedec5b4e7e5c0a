//! The default model, SmolLM2-135M-Instruct, loaded and run on the CPU backend.
//!
//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), loaded and run for real on the CPU
//! backend.

use crate::common;

use std::path::Path;

use backend::greedy_generate;
use backend::{CpuBackend, CpuOptions, WeightFormat};
use common::require_model;
use model::ChatMessage;
use model::Model;

fn load() -> Model {
    Model::load(Path::new(require_model())).expect("the default model loads")
}

fn backend(model: &Model, format: WeightFormat) -> CpuBackend {
    CpuBackend::new(
        model,
        &CpuOptions {
            block_size: 16,
            num_blocks: 16,
            weight_format: format,
            kv_dtype: None,
        },
    )
    .unwrap()
}

#[test]
fn config_and_tokenizer_come_from_the_gguf() {
    let model = load();
    let c = &model.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size
        ),
        (576, 30, 9, 3, 64, 49152)
    );
    assert!(c.tie_word_embeddings);
    let tok = &model.tokenizer;
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        vec![504, 3575, 282, 4649, 314]
    );
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.eos_token_ids, vec![2]);
    let chat = tok
        .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&chat, false).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(tok.decode(&ids, false).unwrap(), chat);
}

#[test]
fn greedy_decoding_knows_the_capital_of_france() {
    let model = load();
    let mut be = backend(&model, WeightFormat::F32);
    let prompt = model
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    let out = greedy_generate(&mut be, &prompt, 8, &model.tokenizer.eos_token_ids).unwrap();
    let text = model.tokenizer.decode(&out, true).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn the_chat_template_drives_an_answer() {
    let model = load();
    let mut be = backend(&model, WeightFormat::F32);
    let chat = model
        .tokenizer
        .apply_chat_template(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let prompt = model.tokenizer.encode(&chat, false).unwrap();
    let out = greedy_generate(&mut be, &prompt, 24, &model.tokenizer.eos_token_ids).unwrap();
    let text = model.tokenizer.decode(&out, true).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}

/// The CUDA backend uploads tensors as the GGUF stores them and decodes them on the device.
/// Here, on the host: every layer group the file offers encoded decodes (with the loader's own
/// dequantization) to exactly what the f32 path reads, Q and K included (their rows put back
/// in HF's order by the loader); only the norms, f32 in the file, are not offered encoded.
#[test]
fn encoded_weight_groups_decode_to_the_f32_path() {
    use backend::kernel_check::DEVICE_DECODED;
    use backend::kernel_check::{layer_groups, Group};
    use model::{dequantize, GgmlType};
    let model = load();
    let c = &model.config;
    let w = model.weights.as_ref();
    let mut encoded_groups = 0;
    let mut groups: Vec<Group> = vec![Group::one(
        model::names::EMBED,
        &[c.vocab_size, c.hidden_size],
    )];
    for l in [0, c.num_hidden_layers - 1] {
        groups.extend(layer_groups(c, l));
    }
    for group in &groups {
        let names: Vec<&str> = group.tensors.iter().map(|(n, _)| n.as_str()).collect();
        let f32s = group.read(w).unwrap();
        match group.encoded(w, DEVICE_DECODED).unwrap() {
            Some((kind, bytes)) => {
                assert!(
                    matches!(
                        kind,
                        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::F16
                    ),
                    "{names:?}: {kind:?}"
                );
                let mut decoded = vec![0f32; f32s.len()];
                dequantize(kind, &bytes, &mut decoded);
                assert_eq!(decoded, f32s, "{names:?}");
                encoded_groups += 1;
            }
            None => assert!(
                names.iter().all(|n| n.contains("norm")),
                "{names:?} is quantized in the file but not offered encoded"
            ),
        }
    }
    // Embedding, and per layer QKV (Q and K rows put back in HF's order), O, gate/up and down.
    assert_eq!(encoded_groups, 1 + 2 * 4);
}
