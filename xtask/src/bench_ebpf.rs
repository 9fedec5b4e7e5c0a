//! `cargo xtask bench-ebpf`: what the eBPF probe costs, beside libbpf-tools' `runqlat`.
//!
//! `cargo xtask bench-ebpf [--rounds N]`: what the eBPF probe costs, beside libbpf-tools'
//! `runqlat` measured the same way in the same run.
//!
//! The load is the worst case for a scheduler tracer: `perf bench sched pipe -T` pinned to one
//! CPU does nothing but wake a thread and switch to it. Each tracer is attached alone,
//! system-wide (the configuration libbpf-tools' numbers are usually quoted for), with
//! `kernel.bpf_stats_enabled=1`; then
//! - the kernel's own accounting (`bpftool prog show`: run_time_ns / run_cnt) gives the cost
//!   per event of each program;
//! - the benchmark's CPU time (user + sys) with the tracer attached, against none, gives what
//!   the tracing adds to a process that switches all the time.
//!
//! Needs root; installs `perf` (linux-perf), `bpftool` and `runqlat` (libbpf-tools) with apt
//! when they are missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

const LOOPS: &str = "200000";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tracer {
    None,
    /// Every process (the worst case: every event takes the full path).
    Vigil,
    Runqlat,
    /// Watching another process (pid 1): what the benchmark pays for events it does not own.
    VigilOther,
    RunqlatOther,
}

const TRACERS: [Tracer; 5] = [
    Tracer::None,
    Tracer::Vigil,
    Tracer::Runqlat,
    Tracer::VigilOther,
    Tracer::RunqlatOther,
];

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::Vigil => "vigil",
            Tracer::Runqlat => "runqlat",
            Tracer::VigilOther => "vigil -p 1",
            Tracer::RunqlatOther => "runqlat -p 1",
        }
    }
}

#[derive(Default, Debug)]
struct Run {
    usecs_per_op: f64,
    cpu_seconds: f64,
    /// Program name → average ns per run.
    programs: Vec<(String, f64)>,
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds: usize = match args {
        [] => 3,
        [flag, n] if flag == "--rounds" => n.parse().context("--rounds: not a number")?,
        _ => bail!("usage: cargo xtask bench-ebpf [--rounds N]"),
    };
    // The load, the kernel's per-program accounting, and the peer (installed with apt when
    // missing, as `cargo xtask test` installs its tools).
    crate::test::ensure_tools(&[
        ("perf", "linux-perf"),
        ("taskset", "util-linux"),
        ("bpftool", "bpftool"),
        ("runqlat", "libbpf-tools"),
    ])?;
    let vigil = crate::release_vigil()?;
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let previous = std::fs::read_to_string(stats_path).context("reading bpf_stats_enabled")?;
    std::fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled (root?)")?;
    let result = (|| {
        let mut runs: Vec<(Tracer, Run)> = Vec::new();
        for round in 0..rounds {
            for tracer in TRACERS {
                let run = one_run(tracer, &vigil)?;
                eprintln!(
                    "round {round} {:<8} {:.2} us/op, {:.2} CPU s, programs {:?}",
                    tracer.name(),
                    run.usecs_per_op,
                    run.cpu_seconds,
                    run.programs
                );
                runs.push((tracer, run));
            }
        }
        Ok::<_, anyhow::Error>(runs)
    })();
    let _ = std::fs::write(stats_path, previous.trim());
    let runs = result?;

    let med = |t: Tracer, f: &dyn Fn(&Run) -> Option<f64>| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|(x, _)| *x == t)
            .filter_map(|(_, r)| f(r))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let base_cpu = med(Tracer::None, &|r| Some(r.cpu_seconds));
    let base_op = med(Tracer::None, &|r| Some(r.usecs_per_op));
    println!(
        "taskset -c 1 perf bench sched pipe -T -l {LOOPS}, one tracer at a time, medians of {rounds}:"
    );
    println!(
        "{:<14} {:>8} {:>8} {:>10} {:>14} {:>14}",
        "tracer", "us/op", "CPU s", "extra CPU", "wakeup ns/ev", "switch ns/ev"
    );
    for t in TRACERS {
        let prog = |name: &'static str| {
            move |r: &Run| {
                r.programs
                    .iter()
                    .find(|(n, _)| n.as_str() == name)
                    .map(|(_, ns)| *ns)
            }
        };
        let cpu = med(t, &|r| Some(r.cpu_seconds));
        println!(
            "{:<14} {:>8.2} {:>8.2} {:>9.1}% {:>14.0} {:>14.0}",
            t.name(),
            med(t, &|r| Some(r.usecs_per_op)),
            cpu,
            (cpu / base_cpu - 1.0) * 100.0,
            med(t, &prog("sched_wakeup")),
            med(t, &prog("sched_switch")),
        );
    }
    println!(
        "baseline {base_op:.2} us/op; target: <= 150 ns per event for each of Vigil's programs"
    );
    Ok(())
}

fn one_run(tracer: Tracer, vigil: &std::path::Path) -> anyhow::Result<Run> {
    let before = program_ids()?;
    let child = match tracer {
        Tracer::None => None,
        Tracer::Vigil | Tracer::VigilOther => {
            let pid = if tracer == Tracer::Vigil { "0" } else { "1" };
            Some(start(
                Command::new(vigil).args(["sched-latency", "--pid", pid, "--duration", "120"]),
                "attached",
                true,
            )?)
        }
        Tracer::Runqlat => Some(start(
            Command::new("stdbuf").args(["-oL", "runqlat", "120", "1"]),
            "Tracing",
            false,
        )?),
        Tracer::RunqlatOther => Some(start(
            Command::new("stdbuf").args(["-oL", "runqlat", "-p", "1", "120", "1"]),
            "Tracing",
            false,
        )?),
    };
    let cpu_before = children_cpu_seconds();
    let out = Command::new("taskset")
        .args([
            "-c", "1", "perf", "bench", "sched", "pipe", "-T", "-l", LOOPS,
        ])
        .output()
        .context("running perf bench")?;
    let cpu_seconds = children_cpu_seconds() - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let usecs_per_op = text
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|_| l.contains("usecs/op"))
        })
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no usecs/op in perf's output: {text}"))?;
    let programs = match &child {
        Some(_) => program_costs(&before)?,
        None => Vec::new(),
    };
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(Run {
        usecs_per_op,
        cpu_seconds,
        programs,
    })
}

/// Starts a tracer and waits for the line that says it is attached (runqlat runs under
/// `stdbuf -oL`: into a pipe, its stdout would hold that line until it exits).
fn start(cmd: &mut Command, ready: &str, on_stderr: bool) -> anyhow::Result<Child> {
    let mut child = if on_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?
    };
    let pipe: Box<dyn std::io::Read + Send> = if on_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut lines = BufReader::new(pipe).lines();
    for line in lines.by_ref() {
        if line?.contains(ready) {
            // Keep draining so the tracer never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(child);
        }
    }
    let _ = child.wait();
    bail!("the tracer exited before attaching")
}

/// Every loaded BPF program, from `bpftool prog show --json`.
fn programs() -> anyhow::Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(progs.as_array().cloned().unwrap_or_default())
}

fn program_ids() -> anyhow::Result<std::collections::HashSet<u64>> {
    Ok(programs()?
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

/// The average run time per event of each BPF program loaded since `before` was listed (the
/// tracer's: Debian's bpftool cannot name a program's owner), from `bpftool prog show`
/// (needs kernel.bpf_stats_enabled=1).
fn program_costs(before: &std::collections::HashSet<u64>) -> anyhow::Result<Vec<(String, f64)>> {
    let mut costs = Vec::new();
    for p in programs()? {
        let owned = p["id"].as_u64().is_some_and(|id| !before.contains(&id));
        let (Some(name), Some(ns), Some(cnt)) = (
            p["name"].as_str(),
            p["run_time_ns"].as_f64(),
            p["run_cnt"].as_f64(),
        ) else {
            continue;
        };
        if owned && cnt > 0.0 {
            costs.push((name.to_owned(), ns / cnt));
        }
    }
    Ok(costs)
}

/// User + system CPU time of this process's waited-for children.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
