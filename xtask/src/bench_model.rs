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
    let f = |v: &Value, k: &str| v[k].as_f64();
    let llama_b1 = f(&llama, "decode_batch_1_tok_s").unwrap_or(f64::NAN);
    println!("model: {}", model.display());
    println!(
        "vigil weights: {}; llama-cpp-python {}, n_threads=2",
        vigil["weight_format"], llama["llama_cpp_python"]
    );
    println!(
        "{:<28} {:>12} {:>12} {:>22}",
        "", "vigil", "llama.cpp", "ratio"
    );
    let row = |label: &str, key: &str, peer: Option<f64>, vs: &str| {
        let v = f(&vigil, key).unwrap_or(f64::NAN);
        let (p, r) = match peer {
            Some(p) => (format!("{p:.1}"), format!("{:.2}x {vs}", v / p)),
            None => ("-".into(), "-".into()),
        };
        println!("{label:<28} {v:>12.1} {p:>12} {r:>22}");
    };
    row(
        "prefill 512 (tok/s)",
        "prefill_512_tok_s",
        f(&llama, "prefill_512_tok_s"),
        "llama.cpp",
    );
    row(
        "decode batch 1 (tok/s)",
        "decode_batch_1_tok_s",
        Some(llama_b1),
        "llama.cpp b1",
    );
    row(
        "decode batch 8 (tok/s)",
        "decode_batch_8_tok_s",
        Some(llama_b1),
        "llama.cpp b1",
    );
    row(
        "decode batch 32 (tok/s)",
        "decode_batch_32_tok_s",
        Some(llama_b1),
        "llama.cpp b1",
    );
    println!(
        "{:<28} {:>12.1}",
        "peak RSS (MiB)",
        f(&vigil, "peak_rss_mib").unwrap_or(f64::NAN)
    );
    println!(
        "targets: batch-1 decode >= 0.5x llama.cpp; batch-32 aggregate >= 3x llama.cpp batch 1"
    );
    Ok(())
}
