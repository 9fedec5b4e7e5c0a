//! `vigil probe`, the node agent, in front of a real engine speaking the Prometheus text format
//! (a `vigil serve`, whose `vllm:` series are vLLM's).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{
    agent_command, http_get, http_post, promtool_problems, sample, wait_for, Vigil, VIGIL,
};

struct Agent {
    child: Child,
    addr: String,
    log: Vec<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(engine: &Vigil) -> Agent {
    let child = agent_command(&engine.url("/metrics"))
        .args(["--dynamo-namespace", "ns"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vigil probe");
    // Killed on drop, a panic below included.
    let mut agent = Agent {
        child,
        addr: String::new(),
        log: Vec::new(),
    };
    let (tx, rx) = mpsc::channel();
    let stderr = agent.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("vigil probe did not listen: {:?}", agent.log));
        if let Some(rest) = line.split("listening on http://").nth(1) {
            agent.addr = rest.split_whitespace().next().unwrap().to_owned();
            agent.log.push(line);
            return agent;
        }
        agent.log.push(line);
    }
}

#[test]
fn the_agent_passes_the_engines_series_through_and_watches_its_process() {
    let mut engine = Vigil::serve(&["--served-model-name", "smol", "--disable-ebpf-probe"]);
    let agent = start_agent(&engine);
    // It found the engine's process from the port, and watches it.
    assert!(
        agent
            .log
            .iter()
            .any(|l| l.contains("engine process found from its port")
                && l.contains(&format!("pid={}", engine.pid()))),
        "{:?}",
        agent.log
    );
    let body = br#"{"prompt": "Hello", "max_tokens": 3, "ignore_eos": true}"#;
    assert_eq!(http_post(&engine.url("/v1/completions"), body, &[]).0, 200);

    let url = format!("http://{}/metrics", agent.addr);
    let m = wait_for(
        "the engine's threads in the agent's histograms",
        Duration::from_secs(10),
        || {
            let (_, _, m) = http_get(&url, None);
            (sample(&m, "vigil_runqueue_latency_seconds_count{role=\"engine\"}") > Some(0.0))
                .then_some(m)
        },
    );
    // The engine's vllm: series, with Dynamo's labels added after its own.
    let success = m
        .lines()
        .find(|l| {
            l.starts_with("vllm:request_success_total{") && l.contains("finished_reason=\"length\"")
        })
        .expect("passed-through series");
    for label in [
        "model_name=\"smol\"",
        "dynamo_namespace=\"ns\"",
        "dynamo_component=\"backend\"",
        "dynamo_endpoint=\"generate\"",
    ] {
        assert!(success.contains(label), "{success}");
    }
    assert!(success.ends_with(" 1.0"), "{success}");
    assert!(m.contains("# TYPE vllm:request_success_total counter"));
    // Only the configured prefix: the engine's own dynamo_/vigil_ series are not copied.
    assert!(
        !m.contains("dynamo_frontend_model_context_length"),
        "filtered out"
    );
    // The agent's own series come first: Dynamo's runtime uptime, the hardware probes.
    assert!(sample(&m, "dynamo_component_uptime_seconds ") > Some(0.0));
    assert!(m.find("dynamo_component_uptime_seconds").unwrap() < m.find("vllm:").unwrap());
    assert_eq!(sample(&m, "vigil_agent_engine_up "), Some(1.0));
    // The error counters exist at 0 before the first failure, so increase() sees the first.
    for reason in [
        "unreachable",
        "timeout",
        "http_status",
        "not_exposition",
        "no_engine_families",
    ] {
        assert_eq!(
            sample(
                &m,
                &format!("vigil_agent_engine_scrape_errors_total{{reason=\"{reason}\"}}")
            ),
            Some(0.0),
            "{reason}"
        );
    }
    assert_eq!(
        sample(&m, "vigil_probe_up{probe=\"ebpf\",reason=\"running\"}"),
        Some(1.0)
    );
    assert!(m.find("vigil_probe_up").unwrap() < m.find("vllm:").unwrap());
    let problems = promtool_problems(&m);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        http_get(&format!("http://{}/health", agent.addr), None).0,
        200
    );

    // The engine goes away: the agent still answers, says so, and counts the failure.
    engine.kill();
    let (status, _, m) = http_get(&url, None);
    assert_eq!(status, 200);
    assert_eq!(sample(&m, "vigil_agent_engine_up "), Some(0.0));
    assert!(
        sample(
            &m,
            "vigil_agent_engine_scrape_errors_total{reason=\"unreachable\"}"
        ) >= Some(1.0)
    );
    assert!(!m.contains("vllm:"));
    assert_eq!(
        http_get(&format!("http://{}/health", agent.addr), None).0,
        503
    );
}

#[test]
fn a_bad_engine_url_is_a_clear_cli_error() {
    let out = Command::new(VIGIL)
        .args([
            "probe",
            "--engine-metrics-url",
            "https://x:1/metrics",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--engine-metrics-url") && err.contains("http://HOST:PORT"),
        "{err}"
    );
}

/// Serves every request with `status` and `body`, forever; returns its `/metrics` URL.
fn fixed_answer(status: &'static str, content_type: &'static str, body: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// "Up" means the engine's metrics: a page answered with 200, another exporter's metrics or an
/// error status are the engine down, each counted by its reason.
#[test]
fn only_the_engines_exposition_counts_as_the_engine_up() {
    for (status, content_type, body, reason) in [
        (
            "200 OK",
            "text/html",
            "<!DOCTYPE html><html><body>It works!</body></html>",
            "not_exposition",
        ),
        (
            "200 OK",
            "text/plain; version=0.0.4",
            "# TYPE node_load1 gauge\nnode_load1 0.5\n",
            "no_engine_families",
        ),
        (
            "503 Service Unavailable",
            "text/plain",
            "busy",
            "http_status",
        ),
    ] {
        let url = fixed_answer(status, content_type, body);
        let agent = Vigil::spawn({
            let mut c = agent_command(&url);
            c.arg("--disable-ebpf-probe");
            c
        });
        let m = agent.metrics();
        assert_eq!(
            sample(&m, "vigil_agent_engine_up "),
            Some(0.0),
            "{reason}: {m}"
        );
        assert_eq!(
            sample(
                &m,
                &format!("vigil_agent_engine_scrape_errors_total{{reason=\"{reason}\"}}")
            ),
            Some(1.0),
            "{m}"
        );
        assert!(!m.contains("node_load1"), "nothing of it passed through");
        // The log says which check failed (its line arrives through a pipe).
        wait_for("the log line", std::time::Duration::from_secs(10), || {
            agent.log().contains(reason).then_some(())
        });
    }
}

/// In front of a Dynamo-labelled engine with `--metric-prefix dynamo_`, the engine's copy of a
/// family the agent exports itself is not passed through: each family once, and promtool
/// accepts the scrape.
#[test]
fn a_family_of_the_agents_own_is_not_copied_from_the_engine() {
    let url = fixed_answer(
        "200 OK",
        "text/plain; version=0.0.4",
        "# HELP dynamo_component_uptime_seconds Uptime.\n\
         # TYPE dynamo_component_uptime_seconds gauge\n\
         dynamo_component_uptime_seconds 5\n\
         # HELP dynamo_component_requests_total Requests.\n\
         # TYPE dynamo_component_requests_total counter\n\
         dynamo_component_requests_total 7\n",
    );
    let agent = Vigil::spawn({
        let mut c = agent_command(&url);
        c.args(["--metric-prefix", "dynamo_", "--disable-ebpf-probe"]);
        c
    });
    let m = agent.metrics();
    assert_eq!(sample(&m, "vigil_agent_engine_up "), Some(1.0), "{m}");
    assert_eq!(
        m.matches("# TYPE dynamo_component_uptime_seconds ").count(),
        1,
        "{m}"
    );
    assert!(m.contains("dynamo_component_requests_total"), "{m}");
    let problems = promtool_problems(&m);
    assert!(problems.is_empty(), "{problems:?}\n{m}");
    // Compressed when asked, as Prometheus asks.
    let addr = agent.addr;
    let (head, _) = common::raw_get(addr, "/metrics", "Accept-Encoding: gzip\r\n");
    assert!(head.contains("content-encoding: gzip"), "{head}");
}
