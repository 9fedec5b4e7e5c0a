//! The CPU backend computes what llama.cpp computes on the same GGUF, to the bit.
//!
//! The CPU backend computes what llama.cpp computes on the same GGUF, to the bit: the file's
//! own Q4_1 and Q8_0 blocks against activations quantized as llama.cpp quantizes them, an f16
//! KV cache, and llama.cpp's arithmetic where the last bits depend on it (RoPE's angles and
//! fused rotation, `exp`, the orders in which attention's products are summed). So greedy
//! continuations of eight prompts are llama.cpp's, token for token, for as long as they were
//! recorded (32 tokens).
//!
//! The reference is llama.cpp's x86 build with AVX-512 (the orders Vigil follows on every
//! machine; its own kernels give the same bits on every instruction set). Its continuations
//! are recorded in `fixtures/llama_cpp_greedy.json` (by `xtask/bench/llama_cpp_greedy.py`,
//! llama-cpp-python, argmax of each step's logits), so the check runs everywhere; where
//! llama-cpp-python is installed on a CPU with AVX-512, the test runs it again and first
//! checks that the recording is still what llama.cpp says.

use crate::common;

use std::path::Path;
use std::process::Command;

use backend::greedy_generate;
use backend::{CpuBackend, CpuOptions, WeightFormat};
use common::require_model;
use model::Model;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn recorded() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("llama_cpp_greedy.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_output_agrees_with_llama_cpp_on_eight_prompts() {
    let model = Model::load(Path::new(require_model())).unwrap();
    let mut backend = CpuBackend::new(
        &model,
        &CpuOptions {
            block_size: 16,
            num_blocks: 64,
            weight_format: WeightFormat::default(),
            kv_dtype: None,
        },
    )
    .unwrap();
    let recorded = recorded();
    let continuations = recorded["continuations"].as_array().unwrap();
    assert_eq!(continuations.len(), 8);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in continuations {
        let prompt = c["prompt"].as_str().unwrap();
        let prompt_ids = model.tokenizer.encode(prompt, false).unwrap();
        assert_eq!(
            prompt_ids,
            ids(&c["prompt_ids"]),
            "{prompt:?} tokenizes as llama.cpp"
        );
        let want = ids(&c["ids"]);
        let got = greedy_generate(
            &mut backend,
            &prompt_ids,
            want.len(),
            &model.tokenizer.eos_token_ids,
        )
        .unwrap();
        let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        report.push(format!("{agree:>2}/{} {prompt:?}", want.len()));
        if got != want {
            failures.push(format!(
                "{prompt:?}: agrees for {agree} tokens\n  vigil:     {:?}\n  llama.cpp: {:?}",
                model.tokenizer.decode(&got, false).unwrap(),
                model.tokenizer.decode(&want, false).unwrap()
            ));
        }
    }
    eprintln!("tokens agreeing with llama.cpp:\n{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_recording_is_what_llama_cpp_says_where_it_is_installed() {
    let probe = Command::new("python3")
        .args(["-c", "import llama_cpp"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("llama-cpp-python is not installed here; the recorded continuations stand");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    if !avx512 {
        eprintln!("without AVX-512, llama.cpp sums in other orders; the recording stands");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3")
        .arg(root.join("xtask/bench/llama_cpp_greedy.py"))
        .arg(require_model())
        .arg(fixtures().join("agreement_prompts.json"))
        .arg("32")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        live["continuations"],
        recorded()["continuations"],
        "llama.cpp {} now continues differently: rerecord fixtures/llama_cpp_greedy.json",
        live["llama_cpp_python"]
    );
}
