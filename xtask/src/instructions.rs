//! Instructions per decoded token of Vigil and of llama.cpp, under callgrind.
//!
//! Instructions per decoded token (batch 1) of Vigil and of llama.cpp, for `cargo xtask
//! bench-model`: each decodes two lengths after the same prompt, and the difference in
//! instructions over the difference in tokens cancels loading and the prompt.
//!
//! Counted by `perf stat` where the CPU exposes its counter, else, with
//! `VIGIL_BENCH_CALLGRIND=1`, by valgrind's callgrind (which counts the instructions it
//! executes, whatever else the machine is doing, but runs fifty times slower: about ten
//! minutes for the four runs). Both are
//! counted with one thread: with two, each thread's waits at the other's barriers (rayon's
//! and ggml's spin loops) would be counted as work. Under callgrind the CPU appears to have
//! no AVX-512, so Vigil runs its AVX2 kernels; llama.cpp runs only if its build does not use
//! AVX-512 unconditionally (a native build on an AVX-512 CPU does, and valgrind cannot run
//! it): `VIGIL_BENCH_PEER_PYTHONPATH` can name an AVX2 build of llama-cpp-python for this.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// What counts the instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    Perf,
    Callgrind,
}

impl Counter {
    fn detect() -> Result<Counter, &'static str> {
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "instructions", "true"])
            .output();
        if let Ok(out) = perf {
            if count_from_perf(&String::from_utf8_lossy(&out.stderr)).is_ok() {
                return Ok(Counter::Perf);
            }
        }
        if std::env::var_os("VIGIL_BENCH_CALLGRIND").is_none() {
            return Err("perf has no instruction counter here; VIGIL_BENCH_CALLGRIND=1 counts with callgrind (about ten minutes)");
        }
        let valgrind = Command::new("valgrind").arg("--version").output();
        if valgrind.is_ok_and(|o| o.status.success()) {
            Ok(Counter::Callgrind)
        } else {
            Err("VIGIL_BENCH_CALLGRIND is set but valgrind is not installed")
        }
    }

    fn name(self) -> &'static str {
        match self {
            Counter::Perf => "perf stat",
            Counter::Callgrind => "callgrind",
        }
    }

    /// The decode lengths compared: callgrind's count is exact, so fewer tokens do (each is
    /// fifty times slower under it).
    fn lengths(self) -> (usize, usize) {
        match self {
            Counter::Perf => (32, 160),
            Counter::Callgrind => (8, 40),
        }
    }

    /// Instructions `command` executes in user space.
    fn count(self, command: &Command) -> anyhow::Result<f64> {
        let scratch = tempfile::tempdir()?;
        let out_file = scratch.path().join("callgrind.out");
        let mut c = match self {
            Counter::Perf => {
                let mut c = Command::new("perf");
                c.args(["stat", "-x,", "-e", "instructions:u", "--"]);
                c
            }
            Counter::Callgrind => {
                let mut c = Command::new("valgrind");
                c.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out_file.display()));
                c.arg("--");
                c
            }
        };
        c.arg(command.get_program())
            .args(command.get_args())
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
        if let Some(dir) = command.get_current_dir() {
            c.current_dir(dir);
        }
        let out = c
            .output()
            .with_context(|| format!("running {}", self.name()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
            bail!(
                "{:?} failed under {}: {}",
                command.get_program(),
                self.name(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        match self {
            Counter::Perf => count_from_perf(&stderr),
            Counter::Callgrind => count_from_callgrind(&std::fs::read_to_string(&out_file)?),
        }
    }
}

/// The count in `perf stat -x,` output (its first field, before `,instructions`).
fn count_from_perf(stderr: &str) -> anyhow::Result<f64> {
    let line = stderr
        .lines()
        .find(|l| l.contains(",instructions"))
        .with_context(|| format!("perf printed no count: {}", stderr.trim()))?;
    line.split(',')
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no instruction counter here (perf says {line:?})"))
}

/// The total of a callgrind output file (`summary:` or `totals:`, events `Ir`).
fn count_from_callgrind(text: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .context("callgrind wrote no total")
}

/// Prints Vigil's and llama.cpp's instructions per batch-1 decoded token, and their ratio.
pub(crate) fn report(root: &Path, model: &Path) {
    let counter = match Counter::detect() {
        Ok(counter) => counter,
        Err(why) => return println!("instructions/token (b1): not measured: {why}"),
    };
    let vigil = |steps: usize| -> anyhow::Result<Command> {
        let mut c = Command::new(bench_binary(root)?);
        c.arg(model)
            .env("VIGIL_BENCH_DECODE_ONLY", steps.to_string())
            .env("RAYON_NUM_THREADS", "1");
        Ok(c)
    };
    let peer = |steps: usize| -> anyhow::Result<Command> {
        // The interpreter itself: `python3` may be a launcher script (pyenv's), which valgrind
        // would follow no further than its `exec`.
        let mut c = Command::new(python_executable()?);
        c.arg(root.join("xtask/bench/llama_cpp_peer.py"))
            .arg(model)
            .args(["--decode-only", &steps.to_string(), "1"]);
        if let Some(path) = std::env::var_os("VIGIL_BENCH_PEER_PYTHONPATH") {
            c.env("PYTHONPATH", path);
        }
        Ok(c)
    };
    let per_token = |make: &dyn Fn(usize) -> anyhow::Result<Command>| -> anyhow::Result<f64> {
        let (short, long) = counter.lengths();
        let (a, b) = (counter.count(&make(short)?)?, counter.count(&make(long)?)?);
        Ok((b - a) / (long - short) as f64)
    };
    let label = format!("instructions/token (b1, 1 thread, {})", counter.name());
    match (per_token(&vigil), per_token(&peer)) {
        (Ok(v), Ok(p)) => println!("{label:<26} {v:>10.3e} {p:>10.3e} {:>7.2}x", v / p),
        (Ok(v), Err(e)) => println!("{label:<26} {v:>10.3e}  llama.cpp not measured: {e:#}"),
        (Err(e), _) => println!("{label}: not measured: {e:#}"),
    }
}

/// The file `python3` runs as (`sys.executable`).
fn python_executable() -> anyhow::Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The model benchmark's executable, built (release) if it is not.
fn bench_binary(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args([
            "bench",
            "--no-run",
            "-q",
            "--message-format=json",
            "-p",
            "vigil-engine",
            "--bench",
            "model",
        ])
        .current_dir(root)
        .output()
        .context("building the model benchmark")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "model")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .context("cargo printed no executable for the model benchmark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_perf_and_callgrind() {
        let perf = "1234567,,instructions:u,1000,100.00,,\n";
        assert_eq!(count_from_perf(perf).unwrap(), 1_234_567.0);
        assert!(count_from_perf("<not supported>,,instructions:u,0,100.00,,\n").is_err());
        let callgrind = "# callgrind format\nevents: Ir\nfl=(1) a.c\nfn=(1) main\n3 10\nsummary: 98765\ntotals: 98765\n";
        assert_eq!(count_from_callgrind(callgrind).unwrap(), 98_765.0);
    }
}
