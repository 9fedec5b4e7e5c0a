//! `cargo xtask bench-model`: Vigil's CPU backend beside llama.cpp on the same GGUF.
//!
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

/// Rounds of the two benchmarks, alternating, unless `VIGIL_BENCH_ROUNDS` says otherwise: on a
/// shared machine one measurement of either side moves by 10% or more, so each figure is the
/// median of its rounds and the spread is printed beside it.
const ROUNDS: usize = 3;

pub(crate) fn run() -> anyhow::Result<()> {
    crate::fetch_model::run()?;
    let root = workspace_root();
    let model = root.join("models").join(FILE);
    let rounds = match std::env::var("VIGIL_BENCH_ROUNDS") {
        Ok(r) => r
            .parse::<usize>()
            .ok()
            .filter(|r| *r > 0)
            .context("VIGIL_BENCH_ROUNDS: a number of rounds, at least 1")?,
        Err(_) => ROUNDS,
    };
    let (mut vigil, mut llama) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        vigil.push(vigil_round(&root, &model)?);
        llama.push(llama_round(&root, &model)?);
    }
    let first = |v: &[Value], k: &str| v[0][k].clone();
    println!("model: {}", model.display());
    println!(
        "vigil weights: {}; llama-cpp-python {}, n_threads=2, batches in one llama_batch, \
         the faster of flash attention off and on",
        first(&vigil, "weight_format"),
        first(&llama, "llama_cpp_python")
    );
    println!(
        "medians of {rounds} alternating rounds (each side's range in brackets), ratios of the medians"
    );
    println!(
        "{:<26} {:>22} {:>22} {:>8} {:>8}",
        "", "vigil", "llama.cpp", "ratio", "target"
    );
    let row = |label: &str, key: &str, peer_key: &str, target: f64| {
        let (v, p) = (Spread::of(&vigil, key), Spread::of(&llama, peer_key));
        let ratio = v.median / p.median;
        let mark = if ratio >= target { "met" } else { "MISSED" };
        let fa = peer_key.replace("_tok_s", "_flash_attn");
        let fa = if llama.iter().all(|l| l[fa.as_str()].as_bool() == Some(true)) {
            " (llama.cpp with flash attention)"
        } else {
            ""
        };
        println!(
            "{label:<26} {:>22} {:>22} {ratio:>7.2}x {target:>5.1}x {mark}{fa}",
            v.to_string(),
            p.to_string(),
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
        "{:<26} {:>22}",
        "peak RSS (MiB)",
        Spread::of(&vigil, "peak_rss_mib").to_string()
    );
    crate::instructions::report(&root, &model);
    agreement(&root)
}

/// One figure over the rounds: its median and range.
struct Spread {
    median: f64,
    low: f64,
    high: f64,
}

impl Spread {
    fn of(rounds: &[Value], key: &str) -> Spread {
        let mut v: Vec<f64> = rounds
            .iter()
            .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
            .collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread {
            median,
            low: v[0],
            high: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:.1} [{:.0}-{:.0}]", self.median, self.low, self.high)
    }
}

/// Vigil's benchmark (engine/benches/model.rs), once.
fn vigil_round(root: &std::path::Path, model: &std::path::Path) -> anyhow::Result<Value> {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["bench", "-p", "vigil-engine", "--bench", "model", "--"])
        .arg(model)
        .current_dir(root);
    json_of(cargo, "cargo bench")
}

/// The llama.cpp peer (xtask/bench/llama_cpp_peer.py), once.
fn llama_round(root: &std::path::Path, model: &std::path::Path) -> anyhow::Result<Value> {
    let mut python = Command::new("python3");
    python
        .arg(root.join("xtask/bench/llama_cpp_peer.py"))
        .arg(model);
    json_of(
        python,
        "the llama.cpp peer (pip install llama-cpp-python numpy?)",
    )
}

/// The last JSON line `command` prints, or its error output under `what`.
fn json_of(mut command: Command, what: &str) -> anyhow::Result<Value> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        // A crash (a signal) leaves no error output of its own: say how it ended.
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    last_json_line(&out.stdout)
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
