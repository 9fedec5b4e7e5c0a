//! `vigil probe` in front of a real engine.
//!
//! `vigil probe`, the node agent, in front of a real engine speaking the Prometheus text format
//! (a `vigil serve`, whose `vllm:` series are vLLM's).

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{
    agent_command, free_port, http_get, http_post, promtool_problems, require_model, sample,
    simulated_node, wait_for, Vigil, VIGIL,
};

struct Agent {
    child: Child,
    addr: String,
    log: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    /// Waits for a log line containing every one of `parts`.
    fn wait_log(&mut self, parts: &[&str]) -> String {
        let found = |l: &String| parts.iter().all(|p| l.contains(p));
        if let Some(line) = self.log.iter().find(|l| found(l)) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {parts:?}: {:?}", self.log));
            self.log.push(line.clone());
            if found(&line) {
                return line;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(engine: &Vigil) -> Agent {
    start_agent_for(&engine.url("/metrics"), &[])
}

fn start_agent_for(url: &str, args: &[&str]) -> Agent {
    let child = agent_command(url)
        .args(["--dynamo-namespace", "ns"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vigil probe");
    let (tx, rx) = mpsc::channel();
    // Killed on drop, a panic below included.
    let mut agent = Agent {
        child,
        addr: String::new(),
        log: Vec::new(),
        lines: rx,
    };
    let stderr = agent.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = agent
            .lines
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
    let mut agent = start_agent(&engine);
    // It found the engine's process from the port, and watches it.
    agent.wait_log(&[
        "watching the engine's process",
        &format!("pid={}", engine.pid()),
    ]);
    assert!(
        !agent.log.iter().any(|l| l.contains("turned off")),
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

/// A stand-in engine: each request (one thread per connection) is answered with what `answer`
/// gives for the request's number: a delay, then a 200 with the body.
struct Stub {
    url: String,
    addr: String,
    hits: Arc<AtomicUsize>,
}

fn stub(answer: impl Fn(usize) -> (Duration, Vec<u8>) + Send + Sync + 'static) -> Stub {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counted = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = Arc::clone(&answer);
            let counted = Arc::clone(&counted);
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (delay, body) = answer(counted.fetch_add(1, Ordering::SeqCst));
                std::thread::sleep(delay);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    Stub {
        url: format!("http://{addr}/metrics"),
        addr,
        hits,
    }
}

/// A vLLM-like family every stand-in engine serves beside its bad lines.
const GOOD: &str =
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\n";

/// An agent on a simulated GPU node, in front of `url`.
fn agent_on_gpu_node(url: &str, extra: &[&str]) -> Vigil {
    let mut c = agent_command(url);
    c.arg("--disable-ebpf-probe").args(extra);
    c.envs(simulated_node("rtx4090"));
    Vigil::spawn(c)
}

/// The value of the one series `promql` selects, once Prometheus has it.
fn one_value(prometheus: &Prometheus, promql: &str) -> Option<f64> {
    let result = prometheus.query(promql);
    let v = result.first()?["value"][1].as_str()?.parse().ok()?;
    Some(v)
}

/// Whatever the engine's exposition holds, a real Prometheus scraping the agent keeps the
/// target up, the hardware series and the engine's valid series: each line Prometheus would
/// refuse costs that line only, and is counted by reason. The same bodies scraped directly
/// show what the agent used to pass on: Prometheus fails the whole scrape.
#[test]
fn a_bad_engine_line_costs_that_line_not_the_scrape() {
    let mut invalid_utf8 = GOOD.as_bytes().to_vec();
    invalid_utf8.extend_from_slice(b"vllm:bad{path=\"\xff\xfe\"} 1\n");
    // (job, the engine's body, the problem counted, whether Prometheus fails the raw body)
    let cases: Vec<(&str, Vec<u8>, Option<&str>, bool)> = vec![
        ("broken_labels", format!("{GOOD}vllm:bad{{model_name=\"m\" 1\n").into(), Some("malformed_sample"), true),
        // Prometheus reads a raw newline inside quotes as part of the value; so does the agent,
        // which writes it back escaped (passing the line on as two broken lines blanked the
        // agent's scrape).
        ("raw_newline", format!("{GOOD}vllm:nl{{path=\"a\nb\"}} 1\n").into(), None, false),
        ("out_of_range", format!("{GOOD}vllm:bad 1e400\n").into(), Some("invalid_value"), true),
        (
            "exemplar",
            format!("{GOOD}# TYPE vllm:h histogram\nvllm:h_bucket{{le=\"+Inf\"}} 1 # {{trace_id=\"abc\"}} 1.0\nvllm:h_sum 1\nvllm:h_count 1\n").into(),
            Some("exemplar"),
            true,
        ),
        // Debian's Prometheus scrapes a second HELP (promtool and the client libraries' parsers
        // refuse it); the agent writes the first only.
        ("duplicate_help", format!("{GOOD}# HELP vllm:num_requests_running Again.\n").into(), Some("duplicate_metadata"), false),
        ("openmetrics_type", format!("{GOOD}# TYPE vllm:i info\nvllm:i_info{{v=\"1\"}} 1\n").into(), Some("unknown_type"), true),
        ("duplicate_label", format!("{GOOD}vllm:bad{{a=\"1\",a=\"2\"}} 1\n").into(), Some("duplicate_label"), true),
        ("invalid_utf8", invalid_utf8, Some("invalid_utf8"), true),
    ];
    let mut agents = std::collections::HashMap::new();
    let mut targets = Vec::new();
    for (job, body, _, _) in &cases {
        let body = body.clone();
        let engine = stub(move |_| (Duration::ZERO, body.clone()));
        let agent = agent_on_gpu_node(&engine.url, &[]);
        targets.push((format!("agent_{job}"), agent.addr.to_string()));
        targets.push((format!("raw_{job}"), engine.addr.clone()));
        agents.insert(*job, (engine, agent));
    }
    let jobs: Vec<(&str, String)> = targets
        .iter()
        .map(|(j, t)| (j.as_str(), t.clone()))
        .collect();
    let prometheus = Prometheus::start(&jobs);
    let mut mismatched = Vec::new();
    for (job, _, reason, raw_fails) in &cases {
        let agent_job = format!("agent_{job}");
        // Two scrapes in, so that a failing one would show.
        wait_for(
            &format!("{agent_job} scraped twice"),
            Duration::from_secs(60),
            || {
                (one_value(
                    &prometheus,
                    &format!("count_over_time(up{{job=\"{agent_job}\"}}[1m])"),
                )? >= 2.0)
                    .then_some(())
            },
        );
        assert_eq!(
            one_value(
                &prometheus,
                &format!("min_over_time(up{{job=\"{agent_job}\"}}[1m])")
            ),
            Some(1.0),
            "{job}: the agent's target stays up"
        );
        assert!(
            !prometheus
                .query(&format!("vigil_gpu_up{{job=\"{agent_job}\"}}"))
                .is_empty(),
            "{job}: the hardware series stay"
        );
        assert_eq!(
            one_value(
                &prometheus,
                &format!("vllm:num_requests_running{{job=\"{agent_job}\"}}")
            ),
            Some(2.0),
            "{job}: the engine's valid series stay"
        );
        // promtool parses the agent's answer (its lint on the stand-ins' families aside).
        let problems: Vec<String> = promtool_problems(&agents[job].1.metrics())
            .into_iter()
            .filter(|p| !p.ends_with("no help text"))
            .collect();
        assert!(problems.is_empty(), "{job}: {problems:?}");
        match reason {
            Some(reason) => assert!(
                one_value(
                    &prometheus,
                    &format!("vigil_agent_engine_exposition_problems_total{{job=\"{agent_job}\",reason=\"{reason}\"}}")
                ) >= Some(1.0),
                "{job}: counted as {reason}"
            ),
            None => {
                assert_eq!(
                    one_value(&prometheus, &format!("sum(vigil_agent_engine_exposition_problems_total{{job=\"{agent_job}\"}})")),
                    Some(0.0),
                    "{job}: nothing left out"
                );
                assert_eq!(
                    one_value(&prometheus, &format!("vllm:nl{{job=\"{agent_job}\",path=\"a\\nb\"}}")),
                    Some(1.0),
                    "{job}: the series as Prometheus reads it"
                );
            }
        }
        let raw = one_value(&prometheus, &format!("up{{job=\"raw_{job}\"}}"));
        let expected = if *raw_fails { 0.0 } else { 1.0 };
        if raw != Some(expected) {
            mismatched.push(format!("{job}: the body as it is gives up {raw:?}"));
        }
    }
    assert!(mismatched.is_empty(), "{mismatched:?}");
}

/// A scrape with Prometheus's timeout header: how long the agent took, and its answer.
fn scrape_within(agent: &Vigil, timeout_seconds: &str) -> (Duration, String) {
    let started = Instant::now();
    let header = format!("X-Prometheus-Scrape-Timeout-Seconds: {timeout_seconds}\r\n");
    let (head, body) = common::raw_get(agent.addr, "/metrics", &header);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    (started.elapsed(), String::from_utf8(body).unwrap())
}

/// A slow engine costs the freshness of its series, never the agent's scrape: the agent answers
/// within the scraper's timeout, with the engine's last good scrape and its age while that is
/// younger than --engine-stale-after, else without it; a real Prometheus with a 1 s timeout
/// keeps the target up throughout.
#[test]
fn a_slow_engine_costs_freshness_not_the_scrape() {
    // The first answer at once, then 8 s per answer.
    let engine = stub(|n| {
        let delay = if n == 0 { 0 } else { 8 };
        (Duration::from_secs(delay), GOOD.into())
    });
    let agent = agent_on_gpu_node(&engine.url, &["--engine-stale-after", "2"]);
    let (_, m) = scrape_within(&agent, "1");
    assert_eq!(sample(&m, "vllm:num_requests_running{"), Some(2.0), "{m}");
    assert!(
        sample(&m, "vigil_agent_engine_scrape_age_seconds ") < Some(1.0),
        "{m}"
    );
    let prometheus = Prometheus::start(&[("agent", agent.addr.to_string())]);
    // From memory while young enough, then without the engine's series; every answer in time.
    let mut from_memory = false;
    let mut without = false;
    wait_for("both kinds of answer", Duration::from_secs(30), || {
        let (took, m) = scrape_within(&agent, "1");
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
        assert!(
            m.contains("vigil_gpu_up"),
            "the hardware series are always there"
        );
        assert_eq!(sample(&m, "vigil_agent_engine_up "), Some(1.0), "{m}");
        match sample(&m, "vigil_agent_engine_scrape_age_seconds ") {
            Some(age) => {
                assert!(age <= 2.5, "served only while young: {age}");
                assert!(m.contains("vllm:num_requests_running{"), "{m}");
                from_memory |= age > 0.5;
            }
            None => {
                assert!(!m.contains("vllm:"), "{m}");
                without = true;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        (from_memory && without).then_some(())
    });
    wait_for("six scrapes by Prometheus", Duration::from_secs(30), || {
        (one_value(&prometheus, "count_over_time(up{job=\"agent\"}[1m])")? >= 6.0).then_some(())
    });
    assert_eq!(
        one_value(&prometheus, "min_over_time(up{job=\"agent\"}[1m])"),
        Some(1.0),
        "the target stayed up"
    );
    // Every scrape in the meantime shared the one slow fetch in flight.
    assert!(engine.hits.load(Ordering::SeqCst) <= 5, "{:?}", engine.hits);
}

/// The agent's resident memory at its peak so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Concurrent scrapes share one fetch of the engine, and answer from one shared copy of its
/// relayed exposition: 40 plain and 10 gzip scrapes at once of a 6 MB exposition make at most
/// two upstream requests, and raise the agent's peak memory by less than three relayed copies
/// (the one kept, the one a new fetch builds, the compression buffers), not one per scrape.
#[test]
fn concurrent_scrapes_share_one_fetch_and_one_copy() {
    let mut big = String::from(GOOD);
    let mut i = 0;
    while big.len() < 6 << 20 {
        big.push_str(&format!(
            "vllm:big{{engine=\"0\",model_name=\"m\",i=\"{i}\"}} {i}.0\n"
        ));
        i += 1;
    }
    let size = big.len() as u64;
    let body = big.into_bytes();
    let engine = stub(move |_| (Duration::from_secs(1), body.clone()));
    let agent = agent_on_gpu_node(&engine.url, &[]);
    // One scrape alone: the peak of one fetch, parse and relay.
    let (_, m) = scrape_within(&agent, "10");
    assert!(m.contains("vllm:big{"), "the engine's part is served");
    // With the Dynamo labels added, the relayed copy is larger than the engine's.
    let relayed = m.len() as u64;
    let alone = peak_rss(agent.pid());
    let before = engine.hits.load(Ordering::SeqCst);
    let addr = agent.addr;
    let scrapes: Vec<_> = (0..50)
        .map(|n| {
            std::thread::spawn(move || {
                let gzip = if n % 5 == 0 {
                    "Accept-Encoding: gzip\r\n"
                } else {
                    ""
                };
                let extra = format!("X-Prometheus-Scrape-Timeout-Seconds: 10\r\n{gzip}");
                let (head, body) = common::raw_get(addr, "/metrics", &extra);
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let text = if gzip.is_empty() {
                    String::from_utf8(body).unwrap()
                } else {
                    use std::io::Read;
                    assert!(head.contains("content-encoding: gzip"), "{head}");
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_string(&mut text)
                        .unwrap();
                    text
                };
                assert!(text.contains("vigil_gpu_up"));
                text.lines().filter(|l| l.starts_with("vllm:big{")).count()
            })
        })
        .collect();
    for s in scrapes {
        assert_eq!(s.join().unwrap(), i, "every scrape has every engine series");
    }
    let fetches = engine.hits.load(Ordering::SeqCst) - before;
    assert!(
        fetches <= 2,
        "50 concurrent scrapes made {fetches} engine requests"
    );
    let peak = peak_rss(agent.pid());
    let report = format!(
        "peak RSS {} MiB after one scrape, {} MiB after 50 concurrent ones; exposition {} MiB, \
         relayed {} MiB; {fetches} fetch(es)",
        alone >> 20,
        peak >> 20,
        size >> 20,
        relayed >> 20,
    );
    assert!(peak < alone + 3 * relayed, "{report}");
    eprintln!("{report}");
}

/// `vigil serve` on `port`, not watching itself.
fn serve_on(port: u16) -> Vigil {
    let mut c = Command::new(VIGIL);
    c.args(["serve", require_model(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--disable-ebpf-probe"]);
    Vigil::spawn(c)
}

/// The eBPF probe follows the engine's process: started before the engine, the agent finds it
/// when it comes; after a restart it watches the new process, says so in between, and its
/// counters carry on rather than reset.
#[test]
fn the_probe_follows_the_engine_through_start_and_restart() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut agent = start_agent_for(&url, &[]);
    let metrics = format!("http://{}/metrics", agent.addr);
    let scrape = || http_get(&metrics, None).2;
    let m = scrape();
    assert_eq!(
        sample(&m, "vigil_probe_up{probe=\"ebpf\",reason=\"no_target\"}"),
        Some(0.0),
        "{m}"
    );
    let engine_count = |m: &str| sample(m, "vigil_runqueue_latency_seconds_count{role=\"engine\"}");

    let mut engine = serve_on(port);
    agent.wait_log(&[
        "watching the engine's process",
        &format!("pid={}", engine.pid()),
    ]);
    let body = br#"{"prompt": "Hello", "max_tokens": 3, "ignore_eos": true}"#;
    assert_eq!(http_post(&engine.url("/v1/completions"), body, &[]).0, 200);
    let first = wait_for(
        "the first engine's threads counted",
        Duration::from_secs(10),
        || {
            let m = scrape();
            let running =
                sample(&m, "vigil_probe_up{probe=\"ebpf\",reason=\"running\"}") == Some(1.0);
            engine_count(&m).filter(|n| running && *n > 0.0)
        },
    );

    engine.kill();
    agent.wait_log(&["the engine's process is gone"]);
    let m = scrape();
    assert_eq!(
        sample(&m, "vigil_probe_up{probe=\"ebpf\",reason=\"no_target\"}"),
        Some(0.0),
        "not running on a dead process: {m}"
    );
    let engine = serve_on(port);
    agent.wait_log(&[
        "watching the engine's process",
        &format!("pid={}", engine.pid()),
    ]);
    assert_eq!(http_post(&engine.url("/v1/completions"), body, &[]).0, 200);
    wait_for(
        "the second engine's threads counted on top",
        Duration::from_secs(10),
        || {
            let m = scrape();
            let running =
                sample(&m, "vigil_probe_up{probe=\"ebpf\",reason=\"running\"}") == Some(1.0);
            let n = engine_count(&m)?;
            assert!(n >= first, "the counter went back from {first} to {n}");
            (running && n > first).then_some(())
        },
    );
    assert!(
        !agent.log.iter().any(|l| l.contains("turned off")),
        "{:?}",
        agent.log
    );
}

/// The seed the fuzz test mutates: an engine's exposition of every type, with escapes in HELP
/// and label values, and a label the agent injects already set on one series.
const FUZZ_SEED: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m",dynamo_namespace="theirs"} 1.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed \\ with "quotes" and a\nnewline.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m\"q\\b\nc"} 42.0
# HELP vllm:ttft_seconds Histogram of time to first token in seconds.
# TYPE vllm:ttft_seconds histogram
vllm:ttft_seconds_bucket{engine="0",le="0.5"} 1.0
vllm:ttft_seconds_bucket{engine="0",le="1.0"} 2.0
vllm:ttft_seconds_bucket{engine="0",le="+Inf"} 3.0
vllm:ttft_seconds_sum{engine="0"} 1.5
vllm:ttft_seconds_count{engine="0"} 3.0
# HELP vllm:latency_seconds A summary.
# TYPE vllm:latency_seconds summary
vllm:latency_seconds{quantile="0.5"} 0.1
vllm:latency_seconds{quantile="0.99"} 0.9
vllm:latency_seconds_sum 12.0
vllm:latency_seconds_count 40
vllm:plain_untyped 7 1700000000000
"#;

/// Pieces a mutation inserts: what engines get wrong, and what a hostile one sends.
const FUZZ_PIECES: &[&str] = &[
    "{",
    "}",
    "\"",
    "\\",
    ",",
    "=",
    " ",
    "\n",
    "#",
    "_total",
    "_count",
    "_bucket",
    "_sum",
    "__name__=\"x\",",
    "le=\"abc\",",
    "quantile=\"NaN\",",
    "le=\"1e400\",",
    "dynamo_component=\"backend\",",
    "dynamo_namespace=\"ns\",",
    "\\q",
    "\\n",
    "1e400",
    "NaN",
    "-Inf",
    "# TYPE vllm:ttft_seconds_count counter\n",
    "# HELP vllm:ttft_seconds_sum x\\y\n",
    "# TYPE vllm:prompt_tokens counter\n",
    "# HELP vllm:prompt_tokens Help.\n",
    "# TYPE vllm:latency_seconds histogram\n",
    "# TYPE vllm:x_total gauge\n",
    "vllm:x 1\n",
    "vllm:x_total 2\n",
    "vllm:x{a=\"1\"} 3 4 5\n",
];

/// The engine's exposition mutated at random (a deterministic generator, so that a failure
/// reproduces): lines dropped, doubled and swapped, pieces inserted, values and label values
/// replaced.
fn mutate(seed: u64) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n.max(1)
    };
    let mut lines: Vec<String> = FUZZ_SEED.lines().map(str::to_owned).collect();
    for _ in 0..1 + next(4) {
        let i = next(lines.len());
        match next(6) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let copy = lines[i].clone();
                lines.insert(next(lines.len()), copy);
            }
            2 => {
                let j = next(lines.len());
                lines.swap(i, j);
            }
            _ => {
                let line = &mut lines[i];
                let at = next(line.len() + 1);
                let at = (0..=at)
                    .rev()
                    .find(|a| line.is_char_boundary(*a))
                    .unwrap_or(0);
                let piece = FUZZ_PIECES[next(FUZZ_PIECES.len())];
                if next(3) == 0 {
                    let end = (at + 1 + next(6)).min(line.len());
                    let end = (end..=line.len())
                        .find(|e| line.is_char_boundary(*e))
                        .unwrap();
                    line.replace_range(at..end, piece);
                } else {
                    line.insert_str(at, piece);
                }
            }
        }
        if lines.is_empty() {
            break;
        }
    }
    lines.join("\n") + "\n"
}

/// The agent's output is a valid exposition whatever the engine sends: 1,000 mutations of an
/// engine's exposition, each relayed with the Dynamo labels injected, are each accepted by
/// `promtool check metrics` (which parses as Prometheus's scrape does; its lint findings about
/// the engine's names are not rejections), and each keeps every series the reader accepted,
/// none lost, none merged into another.
#[test]
fn the_agents_output_is_always_a_valid_exposition() {
    use exporter::Exposition;
    use vigil::Relay;
    let relay = Relay::new(
        vec!["vllm:".to_owned()],
        Default::default(),
        [
            ("dynamo_namespace", "ns"),
            ("dynamo_component", "backend"),
            ("dynamo_endpoint", "generate"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
    );
    let mut rejected = Vec::new();
    for seed in 0..1000 {
        let input = mutate(seed);
        let parsed = Exposition::parse(input.as_bytes(), |n| relay.passes(n));
        let kept: usize = parsed
            .families
            .iter()
            .filter(|f| relay.passes(f.name))
            .map(|f| f.samples.len())
            .sum();
        let output = relay.relay(&parsed);
        let reread = Exposition::parse(output.as_bytes(), |_| true);
        let out_series: usize = reread.families.iter().map(|f| f.samples.len()).sum();
        let problems = promtool_rejection(&output);
        if out_series != kept || !reread.problems.is_empty() || problems.is_some() {
            rejected.push(format!(
                "seed {seed}: kept {kept}, output {out_series}, reread problems {:?}, promtool {problems:?}\n--- input\n{input}--- output\n{output}",
                reread.problems
            ));
        }
    }
    assert!(
        rejected.is_empty(),
        "{} of 1000 outputs rejected; the first:\n{}",
        rejected.len(),
        rejected[0]
    );
}

/// What `promtool check metrics` says when it cannot parse `exposition` (its lint findings
/// exit 3 and are not rejections).
fn promtool_rejection(exposition: &str) -> Option<String> {
    let (code, text) = common::promtool_check(exposition);
    (!matches!(code, Some(0) | Some(3))).then_some(text)
}
