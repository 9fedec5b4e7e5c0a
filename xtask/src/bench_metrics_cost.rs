//! `cargo xtask bench-metrics-cost`: what recording the `vllm:` metrics costs a server.
//!
//! `cargo xtask bench-metrics-cost [--rounds N]`: what recording the vllm: metrics costs a
//! serving Vigil: the same load against a server with metrics on and
//! one with `--disable-log-stats`.
//!
//! Throughput alone is too noisy on a shared 2-core machine (runs of one configuration differ
//! by several percent), so each round runs both configurations back to back, in alternating
//! order, and also reads the server's own CPU time (utime + stime from `/proc/PID/stat`) per
//! generated token, which the client's share of the machine does not blur.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

/// The load of one run: enough requests to keep the batch full for ~15 s on 2 cores.
const LOAD: &[&str] = &[
    "--num-prompts",
    "48",
    "--random-input-len",
    "128",
    "--random-output-len",
    "64",
    "--max-concurrency",
    "16",
    "--disable-tqdm",
    "--save-result",
];

struct Run {
    output_tok_s: f64,
    cpu_s_per_1k_tokens: f64,
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = match args {
        [] => 5,
        [flag, n] if flag == "--rounds" => n.parse().context("--rounds: not a number")?,
        _ => bail!("usage: cargo xtask bench-metrics-cost [--rounds N]"),
    };
    crate::fetch_model::run()?;
    let vigil = crate::release_vigil()?;
    let dir = tempfile::tempdir()?;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..rounds {
        // Alternate which goes first so drift in the machine's load hits both alike.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for disabled in order {
            let r = one_run(&vigil, disabled, dir.path())?;
            eprintln!(
                "round {round} metrics {}: {:.1} output tok/s, {:.3} server CPU s per 1k tokens",
                if disabled { "off" } else { "on " },
                r.output_tok_s,
                r.cpu_s_per_1k_tokens
            );
            if disabled { &mut off } else { &mut on }.push(r);
        }
    }
    let ratios = |f: fn(&Run) -> f64| -> Vec<f64> {
        on.iter().zip(&off).map(|(a, b)| f(a) / f(b)).collect()
    };
    let tput = ratios(|r| r.output_tok_s);
    let cpu = ratios(|r| r.cpu_s_per_1k_tokens);
    println!("metrics on / metrics off, {rounds} paired rounds:");
    println!(
        "  output throughput ratio: median {:.4} (per round: {})",
        median(&tput),
        list(&tput)
    );
    println!(
        "  server CPU per token ratio: median {:.4} (per round: {})",
        median(&cpu),
        list(&cpu)
    );
    println!("target: < 1% throughput difference");
    Ok(())
}

fn one_run(vigil: &Path, disable_log_stats: bool, dir: &Path) -> anyhow::Result<Run> {
    let mut cmd = Command::new(vigil);
    cmd.args(["serve", "--port", "0"]);
    if disable_log_stats {
        cmd.arg("--disable-log-stats");
    }
    let mut server = Server(
        cmd.stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting vigil serve")?,
    );
    let base = listening_address(&mut server.0)?;
    let pid = server.0.id();
    let cpu_before = cpu_seconds(pid)?;
    let file = format!("run-{disable_log_stats}.json");
    let status = Command::new(vigil)
        .args(["bench", "serve", "--base-url", &base])
        .args(LOAD)
        .arg("--result-dir")
        .arg(dir)
        .args(["--result-filename", &file])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("vigil bench serve failed");
    }
    let cpu = cpu_seconds(pid)? - cpu_before;
    let result: Value = serde_json::from_slice(&std::fs::read(dir.join(&file))?)?;
    let tokens = result["total_output_tokens"]
        .as_f64()
        .context("total_output_tokens missing from the result")?;
    Ok(Run {
        output_tok_s: result["output_throughput"].as_f64().unwrap_or(f64::NAN),
        cpu_s_per_1k_tokens: cpu / tokens * 1000.0,
    })
}

/// Kills the server when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the server's log until it says where it listens.
fn listening_address(child: &mut Child) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(i) = line.find("listening on http://") {
            let addr = line[i + "listening on ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            // Keep draining the log so the server never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(addr);
        }
    }
    bail!("vigil serve exited before listening")
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second()?)
}

fn clock_ticks_per_second() -> anyhow::Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}
