//! `cargo xtask bench-model`: Vigil's CPU backend on the default model (engine/benches/model.rs)
//! and llama.cpp (llama-cpp-python, 2 threads) on the same GGUF, in the same run, with ratios.

use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::fetch_model::FILE;
use crate::workspace_root;

fn last_json_line(out: &[u8]) -> anyhow::Result<Value> {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line in the output")?;
    Ok(serde_json::from_str(line)?)
}

pub fn run() -> anyhow::Result<()> {
    crate::fetch_model::run()?;
    let root = workspace_root();
    let model = root.join("models").join(FILE);
    let out = Command::new(env!("CARGO"))
        .args(["bench", "-p", "vigil-engine", "--bench", "model", "--"])
        .arg(&model)
        .current_dir(&root)
        .output()
        .context("running cargo bench")?;
    if !out.status.success() {
        bail!(
            "cargo bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let vigil = last_json_line(&out.stdout)?;
    let out = Command::new("python3")
        .arg(root.join("xtask/bench/llama_cpp_peer.py"))
        .arg(&model)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "the llama.cpp peer failed (pip install llama-cpp-python numpy?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let llama = last_json_line(&out.stdout)?;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!("model: {}", model.display());
    println!(
        "vigil weights: {}; llama-cpp-python {}, n_threads=2, batches in one llama_batch, \
         the faster of flash attention off and on",
        vigil["weight_format"], llama["llama_cpp_python"]
    );
    println!(
        "{:<26} {:>10} {:>10} {:>8} {:>8}",
        "", "vigil", "llama.cpp", "ratio", "target"
    );
    let row = |label: &str, key: &str, peer_key: &str, target: f64| {
        let (v, p) = (f(&vigil, key), f(&llama, peer_key));
        let mark = if v / p >= target { "met" } else { "MISSED" };
        let fa = peer_key.replace("_tok_s", "_flash_attn");
        let fa = if llama[fa.as_str()].as_bool() == Some(true) {
            " (llama.cpp with flash attention)"
        } else {
            ""
        };
        println!(
            "{label:<26} {v:>10.1} {p:>10.1} {:>7.2}x {:>5.1}x {mark}{fa}",
            v / p,
            target
        );
    };
    row(
        "prefill 512 (tok/s)",
        "prefill_512_tok_s",
        "prefill_512_tok_s",
        1.2,
    );
    row(
        "decode batch 1 (tok/s)",
        "decode_batch_1_tok_s",
        "decode_batch_1_tok_s",
        1.1,
    );
    row(
        "decode batch 8 (tok/s)",
        "decode_batch_8_tok_s",
        "decode_batch_8_tok_s",
        1.3,
    );
    row(
        "decode batch 32 (tok/s)",
        "decode_batch_32_tok_s",
        "decode_batch_32_tok_s",
        1.3,
    );
    row(
        "  vs llama.cpp batch 1",
        "decode_batch_32_tok_s",
        "decode_batch_1_tok_s",
        3.0,
    );
    println!(
        "{:<26} {:>10.1}",
        "peak RSS (MiB)",
        f(&vigil, "peak_rss_mib")
    );
    crate::instructions::report(&root, &model);
    agreement(&root)
}

/// Greedy agreement with llama.cpp on eight prompts (the test that holds it, which also reruns
/// llama.cpp against its recording).
fn agreement(root: &std::path::Path) -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "-q",
            "-p",
            "vigil",
            "--test",
            "llama_cpp_agreement",
            "--",
            "--nocapture",
        ])
        .current_dir(root)
        .output()
        .context("running the agreement test")?;
    let text = String::from_utf8_lossy(&out.stderr);
    for line in text.lines().filter(|l| {
        l.starts_with("tokens agreeing") || l.get(2..3) == Some("/") || l.contains("not installed")
    }) {
        println!("{line}");
    }
    if !out.status.success() {
        bail!("the agreement test failed:\n{text}");
    }
    Ok(())
}
