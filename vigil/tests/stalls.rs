//! One client's CPU-heavy request never stalls the server.
//!
//! One client's CPU-heavy request never stalls the server: measured alone in its own test
//! binary (cargo runs test binaries one at a time), so other tests' servers do not share the
//! CPUs while the latencies are taken.

#[path = "e2e/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{http_post, Vigil};
use serde_json::{json, Value};

fn post(v: &Vigil, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http_post(&v.url(path), body.to_string().as_bytes(), &[]);
    (status, serde_json::from_str(&text).unwrap())
}

/// A client's megabytes of prompt cost it, not the server: tokenization and parsing run off
/// the async workers, a bounded number at a time, and a prompt longer than any prompt of the
/// context length can be is refused before it is tokenized. With two such clients (two 8 MB
/// `/tokenize` bodies, then two just under the limit, four times over) `/health` and a running
/// stream's next token stay prompt.
#[test]
fn huge_prompts_do_not_stall_health_or_streams() {
    use std::io::BufRead;
    let v = Vigil::serve(&[]);
    let huge = "word ".repeat(8 * 1024 * 1024 / 5 - 100);
    let (s, b) = post(&v, "/tokenize", json!({"prompt": huge}));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length of 8192 tokens"),
        "{b}"
    );
    // The longest prompt still tokenized: just under the limit the error names.
    let limit: usize = b["error"]["message"]
        .as_str()
        .unwrap()
        .rsplit('(')
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let big = "x".repeat(limit - 10);

    // The bodies are written once, before the window: the clients' own CPU time is not the
    // server's.
    let bodies = std::sync::Arc::new(
        [&huge, &big].map(|prompt| json!({ "prompt": prompt }).to_string().into_bytes()),
    );

    // A stream runs throughout; its events' arrival times are kept.
    let stream = common::stream_until_first_event(
        v.addr,
        r#"{"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true, "stream": true}"#,
    );
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let arrivals = arrivals.clone();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stream).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("data: ") {
                    arrivals.lock().unwrap().push(std::time::Instant::now());
                }
                if arrivals.lock().unwrap().len() > 2000 {
                    break;
                }
            }
        })
    };
    // A control window first: the same stream with no other client, as long as the machine's
    // own noise needs to show.
    // `/health` is polled through it as through the window that follows.
    std::thread::sleep(Duration::from_millis(300));
    let control_start = std::time::Instant::now();
    let poll_health = |worst: &mut Duration| {
        let t = std::time::Instant::now();
        assert_eq!(v.get("/health", None).0, 200);
        *worst = (*worst).max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut worst_health_control = Duration::ZERO;
    while control_start.elapsed() < Duration::from_secs(3) {
        poll_health(&mut worst_health_control);
    }
    let window_start = std::time::Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let url = v.url("/tokenize");
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    for body in bodies.iter() {
                        let (status, _) = http_post(&url, body, &[]);
                        assert!(status == 200 || status == 400, "{status}");
                    }
                }
            })
        })
        .collect();
    let mut worst_health = Duration::ZERO;
    while clients.iter().any(|c| !c.is_finished()) {
        poll_health(&mut worst_health);
    }
    let window_end = std::time::Instant::now();
    for c in clients {
        c.join().unwrap();
    }
    let times = arrivals.lock().unwrap().clone();
    let gaps_between = |from: std::time::Instant, to: std::time::Instant| -> Vec<Duration> {
        let mut gaps: Vec<Duration> = times
            .windows(2)
            .filter(|w| w[0] >= from && w[1] <= to)
            .map(|w| w[1] - w[0])
            .collect();
        gaps.sort();
        gaps
    };
    // A token's delay is how much later it came than the worst of the control window: the
    // machine's own noise (other processes, a shared host) lengthens both alike.
    let control = gaps_between(control_start, window_start);
    let during = gaps_between(window_start, window_end);
    let worst_control = control.last().copied().unwrap_or_default();
    let worst_gap = during.last().copied().unwrap_or_default();
    let worst_delay = worst_gap.saturating_sub(worst_control);
    eprintln!(
        "window {:?}: /health worst {worst_health_control:?} alone, {worst_health:?} with the \
         clients; stream: worst gap {worst_control:?} alone \
         ({} tokens, median {:?}), {worst_gap:?} with the clients ({} tokens, median {:?})",
        window_end - window_start,
        control.len(),
        control.get(control.len() / 2),
        during.len(),
        during.get(during.len() / 2),
    );
    assert!(during.len() > 10, "the stream ran during the window");
    // As for the stream's tokens: the delay is past the worst of the control window, which
    // the machine's own noise lengthens alike.
    let health_delay = worst_health.saturating_sub(worst_health_control);
    assert!(
        health_delay < Duration::from_millis(100),
        "{worst_health:?} with the clients, {worst_health_control:?} alone"
    );
    assert!(
        worst_delay < Duration::from_millis(100),
        "a token came {worst_delay:?} later than usual"
    );
    drop(reader);
}

/// Constraint compiles run on threads of their own, apart from the request threads that parse
/// and tokenize every request: while one client's compiles (the largest schemas accepted, 128
/// `patternProperties` each) queue there, a plain request is answered, and the queue shows in
/// `vigil_cpu_pool_jobs` (requests there are in no `vllm:` queue yet).
///
/// The queue is sized from a compile measured first, so that it lasts about four seconds on
/// any machine: long enough to outlast the plain request, well inside the ten seconds a
/// compile may wait for a thread before the server answers 503 (which would be the server
/// keeping its word, not a stall).
#[test]
fn grammar_compiles_do_not_hold_up_plain_requests() {
    use common::{sample, wait_for};
    let v = Vigil::serve(&["--served-model-name", "m"]);
    let patterns: serde_json::Map<String, Value> = (0..128)
        .map(|i| (format!("^k{i}[a-z]+$"), json!({"type": "integer"})))
        .collect();
    let constrained = json!({"prompt": "Hello", "max_tokens": 2,
        "guided_json": {"type": "object", "patternProperties": patterns}})
    .to_string();
    let compiled =
        "vigil_structured_output_compile_seconds_count{kind=\"json\",outcome=\"compiled\"}";
    let compile_sum =
        "vigil_structured_output_compile_seconds_sum{kind=\"json\",outcome=\"compiled\"}";

    // Two compiles alone: the second's time, after any one-time cost the first paid.
    let mut alone = Vec::new();
    for _ in 0..2 {
        let (status, text) = http_post(&v.url("/v1/completions"), constrained.as_bytes(), &[]);
        assert_eq!(status, 200, "{text}");
        alone.push(sample(&v.metrics(), compile_sum).unwrap());
    }
    let one_compile = (alone[1] - alone[0]).max(0.01);
    // The server gives constraint compiles half the machine's CPUs, at least one thread.
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1);
    let n_clients = ((4.0 * threads as f64 / one_compile) as usize).clamp(threads + 3, 24);

    let clients: Vec<_> = (0..n_clients)
        .map(|_| {
            let (url, body) = (v.url("/v1/completions"), constrained.clone());
            std::thread::spawn(move || http_post(&url, body.as_bytes(), &[]))
        })
        .collect();
    let waiting = "vigil_cpu_pool_jobs{pool=\"grammar\",state=\"waiting\"}";
    wait_for(
        "compiles waiting for a grammar thread",
        Duration::from_secs(10),
        || (sample(&v.metrics(), waiting)? > 0.0).then_some(()),
    );
    let (status, body) = post(
        &v,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 1}),
    );
    assert_eq!(status, 200, "{body}");
    let still_waiting = sample(&v.metrics(), waiting).unwrap();
    assert!(
        still_waiting > 0.0,
        "the plain request was answered only once the compiles were done \
         ({n_clients} clients, one compile alone {one_compile:.3} s)"
    );
    for c in clients {
        let (status, text) = c.join().unwrap();
        assert_eq!(
            status, 200,
            "{text} ({n_clients} clients, one compile alone {one_compile:.3} s)"
        );
    }
    let m = v.metrics();
    assert_eq!(sample(&m, waiting), Some(0.0), "{m}");
    assert_eq!(sample(&m, compiled), Some((n_clients + 2) as f64), "{m}");
}
