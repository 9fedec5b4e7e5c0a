//! Helpers shared by the end-to-end tests.
//!
//! Helpers shared by the end-to-end tests: start the real `vigil` binary and talk to it over
//! real HTTP.

#![allow(dead_code)]

pub(crate) mod notify;
pub(crate) mod prometheus;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary cargo built for these tests.
pub(crate) const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

/// The default model, fetched by `cargo xtask fetch-model` (which `cargo xtask test` runs).
pub(crate) const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

/// Panics with the command to run when the default model has not been fetched.
pub(crate) fn require_model() -> &'static str {
    assert!(
        std::path::Path::new(MODEL).exists(),
        "{MODEL} is missing: run `cargo xtask fetch-model` (cargo xtask test does)"
    );
    MODEL
}

/// A running `vigil serve`, killed on drop.
pub(crate) struct Vigil {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Vigil {
    /// Starts `vigil serve MODEL --host 127.0.0.1 --port 0 <args>` with the default model and
    /// waits until it listens.
    pub(crate) fn serve(args: &[&str]) -> Vigil {
        Self::serve_as(&[], args)
    }

    /// Like [`Vigil::serve`], run through `wrapper` (e.g. `setpriv ...` to drop privileges).
    pub(crate) fn serve_as(wrapper: &[&str], args: &[&str]) -> Vigil {
        Self::serve_with(wrapper, args, &[])
    }

    /// Like [`Vigil::serve`], with `envs` added to its environment.
    pub(crate) fn serve_env(args: &[&str], envs: &[(&str, &str)]) -> Vigil {
        Self::serve_with(&[], args, envs)
    }

    fn serve_with(wrapper: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Vigil {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(VIGIL);
                c
            }
            None => Command::new(VIGIL),
        };
        command
            .args([
                "serve",
                require_model(),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args(args)
            .envs(envs.iter().copied());
        Self::spawn(command)
    }

    /// Runs `command` (a `vigil serve` however started) with `RUST_LOG=info` unless it sets
    /// its own, and waits until it logs the address it listens on.
    pub(crate) fn spawn(mut command: Command) -> Vigil {
        if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vigil");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = server::listening_url(&line) {
                    let _ = tx.send(url);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => url
                .trim_start_matches("http://")
                .parse()
                .expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vigil did not start listening; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Vigil { child, addr, log }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the process to exit; returns its status.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// Sends SIGTERM and returns at once.
    pub(crate) fn send_sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits (at most `timeout`) for the process to exit; returns its status.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for vigil") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "vigil did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server now (and waits for it).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// GET `path` with optional `Accept`; returns (status, content type, body).
    pub(crate) fn get(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        http_get(&self.url(path), accept)
    }

    /// POST `body` to `path`; returns the status and the answer parsed as JSON.
    pub(crate) fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let (status, text) = http_post(&self.url(path), body.to_string().as_bytes(), &[]);
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, json)
    }

    /// POST `body` to `path`, which must answer 200; returns the answer as JSON.
    pub(crate) fn post_ok(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let (status, json) = self.post_json(path, body);
        assert_eq!(status, 200, "{json}");
        json
    }

    /// The Prometheus text exposition.
    pub(crate) fn metrics(&self) -> String {
        let (status, _, body) = self.get("/metrics", None);
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST `body` as JSON to `url`; returns (status, body) whatever the status.
pub(crate) fn http_post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut req = agent.post(url).header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().expect("body"))
}

/// The value of the first sample line of `exposition` that starts with `prefix`.
pub(crate) fn sample(exposition: &str, prefix: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// GET `url`; returns (status, content type, body) whatever the status.
pub(crate) fn http_get(url: &str, accept: Option<&str>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(accept) = accept {
        req = req.header("Accept", accept);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.body_mut().read_to_string().expect("body");
    (status, ctype, body)
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub(crate) fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `promtool check metrics` on `exposition`: its exit status (0 clean, 3 lint findings
/// only, 1 when it cannot parse the exposition) and what it printed.
pub(crate) fn promtool_check(exposition: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Runs `promtool check metrics` on `exposition` and returns the problems it reports that are
/// not the two inherent to vLLM's names (colons in names, and `vllm:iteration_tokens_total`
/// being a histogram whose name ends in `_total`). Parse errors always count.
pub(crate) fn promtool_problems(exposition: &str) -> Vec<String> {
    let (code, text) = promtool_check(exposition);
    // promtool exits 0 when clean, 3 when only lint problems were found, 1 on parse errors.
    let mut problems: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let inherent = (l.starts_with("vllm:") && l.ends_with("metric names should not contain ':'"))
                || l.starts_with("vllm:iteration_tokens_total non-counter metrics should not have \"_total\" suffix");
            !inherent
        })
        .map(str::to_owned)
        .collect();
    if !matches!(code, Some(0) | Some(3)) {
        problems.push(format!("promtool exited with {code:?}"));
    }
    problems
}

/// Sends a streaming `POST /v1/completions` with `body` over a raw connection to `addr` and
/// returns once the first SSE `data:` event has arrived, with the connection still open (drop it,
/// or shut it down, to play a client that goes away).
pub(crate) fn stream_until_first_event(
    addr: impl std::net::ToSocketAddrs,
    body: &str,
) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended before any event"
        );
    }
    stream
}

/// The catalog series names (`vllm:`, `dynamo_`, `vigil_` prefixes) a PromQL expression reads,
/// each with the catalog entry of its family, or `None` when no entry has it: the check that
/// rules and dashboards only name series Vigil emits.
pub(crate) fn series_in_promql(
    expr: &str,
) -> Vec<(String, Option<&'static exporter::catalog::MetricDef>)> {
    use exporter::catalog::{find, Kind};
    // Label values in quotes are not names: drop them first.
    let unquoted: String = expr
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, part)| part)
        .collect::<Vec<_>>()
        .join(" ");
    let tokens = unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
    let families = [
        ("_bucket", Kind::Histogram),
        ("_sum", Kind::Histogram),
        ("_count", Kind::Histogram),
        ("_total", Kind::Counter),
        ("", Kind::Gauge),
    ];
    tokens
        .filter(|t| t.starts_with("vllm:") || t.starts_with("dynamo_") || t.starts_with("vigil_"))
        .map(|token| {
            let def = families.iter().find_map(|(suffix, kind)| {
                let def = find(token.strip_suffix(suffix)?)?;
                (def.kind == *kind).then_some(def)
            });
            (token.to_owned(), def)
        })
        .collect()
}

/// The folder of the simulated GPU's libraries (`cuda-sim`, built and linked by `cargo xtask
/// test`, which names the folder in `VIGIL_CUDA_SIM`).
pub(crate) fn simulator() -> String {
    std::env::var("VIGIL_CUDA_SIM")
        .expect("VIGIL_CUDA_SIM names no simulator: run the tests with `cargo xtask test`")
}

/// `LD_LIBRARY_PATH` with `dir` first.
pub(crate) fn library_path_with(dir: &str) -> String {
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(rest) => format!("{dir}:{rest}"),
        Err(_) => dir.to_owned(),
    }
}

/// The environment under which `vigil` sees the GPUs of `cuda-sim/profiles/{profile}.json`
/// through the simulated NVML. Serve with `--device cpu`: the simulator's folder holds the
/// simulated CUDA driver too.
pub(crate) fn simulated_node(profile: &str) -> Vec<(&'static str, String)> {
    let sim = simulator();
    vec![
        ("LD_LIBRARY_PATH", library_path_with(&sim)),
        (
            "VIGIL_NVML_PROFILE",
            format!(
                "{}/../cuda-sim/profiles/{profile}.json",
                env!("CARGO_MANIFEST_DIR")
            ),
        ),
        ("VIGIL_NVML_SIM_LIB", format!("{sim}/libcuda.so")),
    ]
}

/// `vigil probe`, the node agent, in front of the engine whose `/metrics` is at
/// `engine_metrics_url`, on a free loopback port, polling its probes every 0.2 s.
pub(crate) fn agent_command(engine_metrics_url: &str) -> Command {
    let mut command = Command::new(VIGIL);
    command.args([
        "probe",
        "--engine-metrics-url",
        engine_metrics_url,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--probe-interval",
        "0.2",
    ]);
    command
}

/// `GET path` with the request header lines `extra`, over a raw connection: (head, body bytes).
pub(crate) fn raw_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase(),
        raw[split + 4..].to_vec(),
    )
}
