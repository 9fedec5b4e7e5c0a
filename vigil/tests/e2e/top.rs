//! `vigil top --once` against a running server, checked against Prometheus's own arithmetic.
//!
//! `vigil top --once` against a running `vigil serve` under traffic: its rates and quantiles
//! are what a real Prometheus computes (`rate`, `histogram_quantile`) from the same two
//! scrapes, which `--save-scrapes` keeps and `promtool` backfills into a TSDB.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::prometheus::Prometheus;
use common::{http_post, Vigil};

/// The `key=value` fields of the first output line starting with `kind `.
fn fields(out: &str, kind: &str) -> HashMap<String, String> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{kind} ")))
        .unwrap_or_else(|| panic!("no {kind} line in:\n{out}"));
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A scrape as OpenMetrics input for `promtool tsdb create-blocks-from openmetrics`: its
/// samples stamped with the time it was taken, without metadata (Prometheus treats every
/// series alike for `rate` and `histogram_quantile`).
fn as_openmetrics(scrape: &str, seconds: f64) -> String {
    let mut out = String::new();
    for line in scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        out.push_str(&format!("{line} {seconds:.3}\n"));
    }
    out.push_str("# EOF\n");
    out
}

#[test]
fn once_gives_what_prometheus_computes_from_the_same_scrapes() {
    let vigil = Vigil::serve(&["--served-model-name", "smol"]);
    let url = vigil.url("/v1/completions");
    let complete = move |n: usize| {
        let body = format!(
            r#"{{"model":"smol","prompt":"Count to ten: one, two,","max_tokens":{n},"temperature":0}}"#
        );
        http_post(
            &url,
            body.as_bytes(),
            &[("content-type", "application/json")],
        )
        .0
    };
    // Counters above zero before the window, then steady traffic through it.
    assert_eq!(complete(4), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..3)
        .map(|i| {
            let (stop, complete) = (stop.clone(), complete.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(complete(8 + 4 * i), 200);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let scrapes = dir.path().join("scrapes");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["top", "--once", "--interval", "3", "--url", &vigil.url("")])
        .arg("--save-scrapes")
        .arg(&scrapes)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine = fields(&stdout, "engine");
    assert_eq!(engine["model_name"], "smol");
    assert!(stdout.contains("\nwhy: "), "{stdout}");

    // The same two scrapes, backfilled into a TSDB for a real Prometheus.
    let times: Vec<f64> = (0..2)
        .map(|n| {
            std::fs::read_to_string(scrapes.join(format!("0-{n}.time")))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let data = dir.path().join("data");
    for (n, time) in times.iter().enumerate() {
        let body = std::fs::read_to_string(scrapes.join(format!("0-{n}.prom"))).unwrap();
        let om = dir.path().join(format!("{n}.om"));
        std::fs::write(&om, as_openmetrics(&body, *time)).unwrap();
        let made = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let prometheus = Prometheus::start_on_data(&data);
    // At the second scrape, over a range reaching just past the first: rate() then divides
    // the increase by the time between the scrapes (in ms, as the TSDB keeps them).
    let (t0, t1) = (
        (times[0] * 1e3).round() as i64,
        (times[1] * 1e3).round() as i64,
    );
    let range = format!("{}ms", t1 - t0 + 1);
    let at = t1 as f64 / 1e3;
    let id = r#"model_name="smol",engine="0""#;
    let prom = |promql: String| -> f64 {
        let result = prometheus.query_at(&promql, at);
        assert_eq!(result.len(), 1, "{promql}: {result:?}");
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    let rate = |name: &str| prom(format!("rate({name}{{{id}}}[{range}])"));
    let quantile = |q: f64, name: &str| {
        prom(format!(
            "histogram_quantile({q}, rate({name}_bucket{{{id}}}[{range}]))"
        ))
    };
    let mut checks: Vec<(String, f64)> = vec![
        (
            "running".into(),
            prom(format!("vllm:num_requests_running{{{id}}}")),
        ),
        (
            "kv_cache_usage".into(),
            prom(format!("vllm:kv_cache_usage_perc{{{id}}}")),
        ),
        (
            "generation_tokens_per_s".into(),
            rate("vllm:generation_tokens_total"),
        ),
        (
            "prompt_tokens_per_s".into(),
            rate("vllm:prompt_tokens_total"),
        ),
        (
            "preemptions_per_s".into(),
            rate("vllm:num_preemptions_total"),
        ),
    ];
    for (key, name) in [
        ("ttft", "vllm:time_to_first_token_seconds"),
        ("itl", "vllm:inter_token_latency_seconds"),
        ("e2e", "vllm:e2e_request_latency_seconds"),
        ("queue", "vllm:request_queue_time_seconds"),
    ] {
        checks.push((format!("{key}_p50_s"), quantile(0.5, name)));
        checks.push((format!("{key}_p99_s"), quantile(0.99, name)));
    }
    for (key, want) in checks {
        let got: f64 = engine[&key].parse().unwrap();
        let close =
            (got.is_nan() && want.is_nan()) || (got - want).abs() <= 1e-3 * want.abs().max(1e-9);
        assert!(close, "{key}: vigil top {got}, Prometheus {want}\n{stdout}");
    }
    // The window saw the traffic.
    let got = |k: &str| engine[k].parse::<f64>().unwrap();
    assert!(got("generation_tokens_per_s") > 0.0, "{stdout}");
    assert!(got("itl_p99_s") > 0.0, "{stdout}");
    assert!(got("ttft_p99_s") > 0.0, "{stdout}");
}

#[test]
fn an_endpoint_that_is_away_is_reported_not_fatal() {
    let port = common::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["top", "--once", "--interval", "0.1", "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("unreachable"), "{stdout}");
    assert!(stdout.contains("why: no engine series"), "{stdout}");
}

/// A tmux server of its own, holding one window that runs `command`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("vigil-top-test-{}", std::process::id()),
        };
        tmux.run(&["new-session", "-d", "-s", "top", "-x", &width.to_string()])
            .run(&["set-option", "-g", "remain-on-exit", "on"]);
        tmux.run(&["resize-window", "-t", "top", "-y", &height.to_string()]);
        tmux.run(&["respawn-pane", "-k", "-t", "top", command]);
        tmux
    }

    fn run(&self, args: &[&str]) -> &Tmux {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        self.run(&args);
    }

    /// Waits until the screen satisfies `ok`, and returns it.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        common::wait_for(what, Duration::from_secs(30), || {
            let s = self.screen();
            ok(&s).then_some(s)
        })
    }

    fn pane(&self, format: &str) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "display-message",
                "-p",
                "-t",
                "top",
                format,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn serve_on(port: u16, name: &str) -> Vigil {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    command
        .args(["serve", common::require_model(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--served-model-name", name]);
    Vigil::spawn(command)
}

/// The screen in a real terminal: its panels, its keys, a resize, and an endpoint that goes
/// away and comes back.
#[test]
fn the_screen_answers_keys_resizes_and_outlives_an_endpoint() {
    let alpha = Vigil::serve(&["--served-model-name", "alpha"]);
    let port = common::free_port();
    let mut beta = serve_on(port, "beta");
    // The exit status is written down by the shell (tmux does not always learn it).
    let status = tempfile::NamedTempFile::new().unwrap();
    let command = format!(
        "{} top --interval 0.5 --url {} --url http://127.0.0.1:{port}; echo $? > {}",
        env!("CARGO_BIN_EXE_vigil"),
        alpha.url(""),
        status.path().display()
    );
    let tmux = Tmux::start(&command, 160, 45);
    let screen = tmux.wait("both engines on screen", |s| {
        s.contains("alpha") && s.contains("beta")
    });
    for panel in [
        "Why is it slow?",
        "Engines",
        "GPUs",
        "Host scheduling",
        "q quit",
    ] {
        assert!(screen.contains(panel), "{panel}:\n{screen}");
    }
    // The selected engine's sparklines follow the arrow keys.
    assert!(screen.contains("gen tokens/s: alpha"), "{screen}");
    tmux.keys(&["Down"]);
    tmux.wait("beta selected", |s| s.contains("gen tokens/s: beta"));
    tmux.keys(&["Up"]);
    tmux.wait("alpha selected", |s| s.contains("gen tokens/s: alpha"));
    tmux.keys(&["p"]);
    tmux.wait("paused", |s| s.contains("[PAUSED]"));
    tmux.keys(&["p"]);
    tmux.wait("running again", |s| !s.contains("[PAUSED]"));
    tmux.keys(&["+"]);
    tmux.wait("a longer window", |s| s.contains("window 1.0 s"));
    tmux.keys(&["-"]);
    tmux.wait("the window back", |s| s.contains("window 0.5 s"));

    // Smaller: still drawn, still alive.
    tmux.run(&["resize-window", "-t", "top", "-x", "90", "-y", "30"]);
    let small = tmux.wait("redrawn at 90 columns", |s| {
        s.lines().all(|l| l.chars().count() <= 90) && s.contains("Engines")
    });
    assert_eq!(tmux.pane("#{pane_dead}"), "0", "{small}");
    tmux.run(&["resize-window", "-t", "top", "-x", "160", "-y", "45"]);

    // beta goes away: reported, the screen carries on; it comes back on the same port.
    beta.kill();
    tmux.wait("beta unreachable", |s| s.contains("unreachable"));
    assert_eq!(tmux.pane("#{pane_dead}"), "0");
    let _beta = serve_on(port, "beta");
    tmux.wait("beta back", |s| {
        s.contains("beta") && !s.contains("unreachable")
    });

    tmux.keys(&["q"]);
    let code = common::wait_for("vigil top exits", Duration::from_secs(10), || {
        let code = std::fs::read_to_string(status.path()).unwrap();
        (!code.is_empty()).then_some(code)
    });
    assert_eq!(code.trim(), "0", "{}", tmux.screen());
}

/// Serves `bodies` as `/metrics`, one per request in order (the last one from then on).
fn serve_scrapes(bodies: Vec<String>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let body = &bodies[i.min(bodies.len() - 1)];
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn fixture_pair(name: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/top");
    (0..2)
        .map(|n| std::fs::read_to_string(dir.join(format!("{name}-{n}.prom"))).unwrap())
        .collect()
}

fn top_once(url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["top", "--once", "--interval", "1", "--url", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Between the fixture's two scrapes four requests finished with 48 generated tokens (56 - 8).
#[test]
fn a_vllm_engine_renders_and_its_missing_probes_are_named() {
    let out = top_once(&serve_scrapes(fixture_pair("vllm-0.33")));
    let engine = fields(&out, "engine");
    assert_eq!(engine["model_name"], "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(engine["running"], "0");
    let window: f64 = out.lines().next().unwrap()["window_seconds=".len()..]
        .parse()
        .unwrap();
    let gen: f64 = engine["generation_tokens_per_s"].parse().unwrap();
    assert!(
        (gen * window - 48.0).abs() < 1e-6,
        "{gen} x {window}\n{out}"
    );
    for k in ["ttft_p50_s", "ttft_p99_s", "itl_p99_s", "e2e_p99_s"] {
        let v: f64 = engine[k].parse().unwrap();
        assert!(v > 0.0, "{k}: {out}");
    }
    assert!(out.contains("GPU: no vigil_gpu_utilization_ratio"), "{out}");
    assert!(
        out.contains("host: no vigil_runqueue_latency_seconds"),
        "{out}"
    );
    assert!(!out.contains("\nfrontend "), "{out}");
}

#[test]
fn a_dynamo_frontend_renders_and_the_missing_engine_is_named() {
    let out = top_once(&serve_scrapes(fixture_pair("dynamo-frontend")));
    let frontend = fields(&out, "frontend");
    assert_eq!(frontend["model"], "Qwen/Qwen3-0.6B");
    let window: f64 = out.lines().next().unwrap()["window_seconds=".len()..]
        .parse()
        .unwrap();
    let requests: f64 = frontend["requests_per_s"].parse().unwrap();
    assert!((requests * window - 4.0).abs() < 1e-9, "{out}");
    let ttft: f64 = frontend["ttft_p99_s"].parse().unwrap();
    assert!(ttft > 0.0, "{out}");
    assert!(
        out.contains("engine: no vllm:num_requests_running"),
        "{out}"
    );
    assert!(!out.contains("\nengine "), "{out}");
}

/// GPU rows on a simulated node (`cuda-sim`'s NVML answering from `failing-node.json`): GPU 2
/// is held down by hardware slowdown and thermal slowdown from its first second at 92 °C, and
/// the verdict names it before anything else but GPU 1, which reports XID 79 at 2 s and falls
/// off the bus at 3 s: once lost it keeps its row (`up=0`, its fatal XID), and the verdict
/// names it first. The idle reason of GPU 0 is not throttling.
#[test]
fn gpu_rows_show_a_throttled_or_lost_gpu_and_the_verdict_names_it() {
    let env = common::simulated_node("failing-node");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let vigil = Vigil::serve_env(&["--device", "cpu", "--probe-interval", "0.2"], &env);
    std::thread::sleep(Duration::from_millis(1500));
    let rows = |out: &str| -> Vec<HashMap<String, String>> {
        out.lines()
            .filter(|l| l.starts_with("gpu "))
            .map(|l| fields(&format!("{l}\n"), "gpu"))
            .collect()
    };
    let out = top_once(&vigil.url(""));
    let gpus = rows(&out);
    // Every GPU has its row, a lost one too.
    assert_eq!(gpus.len(), 4, "{out}");
    let gpu = |i: &str| gpus.iter().find(|g| g["gpu"] == i).unwrap();
    assert_eq!(gpu("0")["throttled_by"], "none", "{out}");
    assert_eq!(
        gpu("2")["throttled_by"],
        "hw_slowdown,hw_thermal_slowdown",
        "{out}"
    );
    assert_eq!(gpu("2")["temperature_celsius"], "92");
    // The profile's milliwatts and percent in the series' watts and ratio.
    assert_eq!(gpu("3")["power_watts"], "175");
    assert_eq!(gpu("3")["utilization"], "0.3");
    assert_eq!(gpu("3")["memory_used_bytes"], "4294967296");
    if gpu("1")["up"] == "1" && gpu("1")["fatal_xids"] == "none" {
        assert!(
            out.contains(
                "why: GPU 2 is throttled (hw_slowdown, hw_thermal_slowdown) at 150 W, 92 °C"
            ),
            "{out}"
        );
    }
    // Past 3 s GPU 1 is lost: its row stays, and it is named first.
    let lost = common::wait_for("GPU 1 lost", Duration::from_secs(10), || {
        let out = top_once(&vigil.url(""));
        rows(&out)
            .iter()
            .any(|g| g["gpu"] == "1" && g["up"] == "0")
            .then_some(out)
    });
    let gpus = rows(&lost);
    assert_eq!(gpus.len(), 4, "{lost}");
    let one = gpus.iter().find(|g| g["gpu"] == "1").unwrap();
    assert_eq!(one["fatal_xids"], "79", "{lost}");
    assert!(
        lost.contains("why: GPU 1 is lost: the probe cannot read it after XID 79"),
        "{lost}"
    );
}
