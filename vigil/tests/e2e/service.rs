//! Vigil as a systemd service, end to end: notifications, watchdog and draining stop.
//!
//! Vigil as a systemd service, end to end with the real binary and the default model: the
//! sd_notify messages a `Type=notify` unit depends on (READY, WATCHDOG, STOPPING) received on a
//! real notification socket, the drain on SIGTERM with real requests in flight, JSON logs, and
//! flags set from the environment (what `EnvironmentFile=` does).

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use common::notify::{count, NotifySocket};
use common::*;

#[test]
fn systemd_hears_ready_then_the_watchdog_while_the_engine_moves_then_stopping() {
    let notify = NotifySocket::new();
    // A 2 s watchdog: fed every second while the engine has beaten within the last second.
    let mut vigil = Vigil::serve_env(
        // One step for the whole prompt below (the CPU's default budget would split it).
        &["--max-num-batched-tokens", "2048"],
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let ready = notify.until("READY=1", Duration::from_secs(10));
    let ready_msg = &ready.last().unwrap().1;
    assert!(
        ready_msg.contains("STATUS=serving"),
        "READY=1 comes with a status line: {ready_msg:?}"
    );
    assert!(
        ready.iter().any(|(_, m)| m.contains("STATUS=loading")),
        "a status line while loading: {ready:?}"
    );
    // Idle: the engine loop beats every 250 ms, so the watchdog is fed.
    let idle = notify.until("WATCHDOG=1", Duration::from_secs(3));
    assert_eq!(count(&idle, "WATCHDOG=1"), 1);

    // One long prefill step (about 900 prompt tokens in one step: seconds on a CPU, longer than
    // the watchdog's half period) keeps the loop from going round, but each layer it finishes
    // beats: a slow step that moves is not a wedged engine, and systemd keeps hearing from it.
    let prompt = "the cat sat on the mat ".repeat(150);
    let url = vigil.url("/v1/completions");
    let body = serde_json::json!({"prompt": prompt, "max_tokens": 1}).to_string();
    let started = Instant::now();
    let request = std::thread::spawn(move || http_post(&url, body.as_bytes(), &[]));
    let mut during = Vec::new();
    while !request.is_finished() {
        if let Some(msg) = notify.recv(Duration::from_millis(100)) {
            during.push(msg);
        }
    }
    let step = started.elapsed();
    let (status, _) = request.join().unwrap();
    assert_eq!(status, 200);
    let after = notify.until("WATCHDOG=1", Duration::from_secs(3));
    let log = vigil.log();
    eprintln!("the long step took {step:?}");
    assert!(
        step > Duration::from_secs(1),
        "the step must outlast the half period to test anything: {step:?}"
    );
    assert!(
        !log.contains("withholding the watchdog"),
        "a long step that moves keeps the watchdog fed; log:\n{log}"
    );
    let beats: Vec<Instant> = idle
        .iter()
        .chain(&during)
        .chain(&after)
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    let worst = beats
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst < Duration::from_secs(2),
        "a gap of {worst:?} between WATCHDOG=1 messages: systemd would have restarted us"
    );

    let status = vigil.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let stopping = notify.until("STOPPING=1", Duration::from_secs(1));
    assert!(stopping.last().unwrap().1.contains("STATUS=draining"));
}

/// Reads an SSE response until `data: [DONE]`; returns every `data:` line.
fn read_events(stream: std::net::TcpStream) -> Vec<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.expect("read the stream");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_owned());
            if data == "[DONE]" {
                break;
            }
        }
    }
    events
}

fn finish_reasons(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| v["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

/// POST a completion; returns (status, Retry-After, body).
fn post_completion(url: &str) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(r#"{"prompt": "Hello", "max_tokens": 4}"#)
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = String::new();
    resp.body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .unwrap();
    (resp.status().as_u16(), retry, body)
}

#[test]
fn sigterm_refuses_new_requests_with_retry_after_lets_those_in_flight_finish_and_exits_0() {
    let mut vigil = Vigil::serve(&["--shutdown-timeout", "120"]);
    let body = |max_tokens: u32| {
        format!(
            r#"{{"prompt": "Count to fifty:", "max_tokens": {max_tokens}, "ignore_eos": true, "stream": true}}"#
        )
    };
    let first = stream_until_first_event(vigil.addr, &body(60));
    // Long enough to still run while the first is counted.
    let second = stream_until_first_event(vigil.addr, &body(800));
    vigil.send_sigterm();
    wait_for("/health to turn 503", Duration::from_secs(10), || {
        (vigil.get("/health", None).0 == 503).then_some(())
    });
    let (status, retry_after, refused) = post_completion(&vigil.url("/v1/completions"));
    assert_eq!(status, 503, "{refused}");
    let retry: u64 = retry_after
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=120).contains(&retry), "Retry-After {retry}");
    let err: serde_json::Value = serde_json::from_str(&refused).expect("a JSON error body");
    assert_eq!(err["error"]["code"], 503);
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    let metrics = vigil.metrics();
    assert_eq!(
        sample(&metrics, "vigil_drain_requests_total{outcome=\"rejected\"}"),
        Some(1.0),
        "{metrics}"
    );
    let drained_count = |outcome: &str| {
        sample(
            &vigil.metrics(),
            &format!("vigil_drain_requests_total{{outcome=\"{outcome}\"}}"),
        )
    };
    for (i, stream) in [first, second].into_iter().enumerate() {
        let events = read_events(stream);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(finish_reasons(&events), ["length"], "finished whole");
        if i == 0 {
            // Counted as it completes, and scrapeable while the drain goes on.
            wait_for("the first to be counted", Duration::from_secs(10), || {
                (drained_count("completed") == Some(1.0)).then_some(())
            });
        }
    }
    let status = vigil.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}");
    let log = vigil.log();
    assert!(
        log.contains("completed=2 aborted=0"),
        "the drain counts both; log:\n{log}"
    );
}

/// A second SIGTERM (or SIGINT) during the drain aborts what is left and exits at once, as
/// vLLM's server does, instead of waiting out the grace period.
#[test]
fn a_second_signal_cuts_the_drain_short() {
    let mut vigil = Vigil::serve(&["--shutdown-timeout", "600"]);
    let body =
        r#"{"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": true}"#;
    let stream = stream_until_first_event(vigil.addr, body);
    vigil.send_sigterm();
    wait_for("/health to turn 503", Duration::from_secs(10), || {
        (vigil.get("/health", None).0 == 503).then_some(())
    });
    let sent = Instant::now();
    vigil.send_sigterm();
    let events = read_events(stream);
    assert_eq!(finish_reasons(&events), ["abort"], "aborted at once");
    let status = vigil.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "exited {:?} after the second signal",
        sent.elapsed()
    );
    assert!(vigil.log().contains("a second signal"), "{}", vigil.log());
}

/// SIGTERM while the model loads is a clean exit with a log line, not a death by signal.
#[test]
fn sigterm_while_loading_exits_cleanly() {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = std::process::Command::new(common::VIGIL);
    cmd.args([
        "serve",
        common::require_model(),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ])
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), None, "killed by a signal: {first}{rest}");
    assert!(status.success(), "{status:?}: {first}{rest}");
    assert!(
        rest.contains("stopped while loading the model") || rest.contains("shut down"),
        "{first}{rest}"
    );
}

#[test]
fn the_end_of_the_grace_period_aborts_requests_still_running() {
    let mut vigil = Vigil::serve(&["--shutdown-timeout", "1"]);
    // Far more tokens than a CPU makes in a second.
    let body =
        r#"{"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true, "stream": true}"#;
    let stream = stream_until_first_event(vigil.addr, body);
    let sent = Instant::now();
    vigil.send_sigterm();
    let events = read_events(stream);
    assert_eq!(
        finish_reasons(&events),
        ["abort"],
        "aborted at the end of the grace"
    );
    let status = vigil.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "stopped long after the grace period: {:?}",
        sent.elapsed()
    );
    let log = vigil.log();
    assert!(log.contains("completed=0 aborted=1"), "log:\n{log}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut vigil = Vigil::serve(&["--log-format", "json"]);
    // At once: the handlers are in place before the server says it listens.
    let status = vigil.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    // The last lines may still be on their way through the pipe.
    let log = wait_for("the last log line", Duration::from_secs(5), || {
        let log = vigil.log();
        log.contains(r#""message":"shut down""#).then_some(log)
    });
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages
        .iter()
        .any(|m| m.starts_with("listening on http://")));
    assert!(messages.iter().any(|m| m == "shut down"), "{messages:?}");
}

#[test]
fn every_serve_flag_can_come_from_the_environment() {
    let vigil = Vigil::serve_env(
        &[],
        &[
            ("VIGIL_SERVED_MODEL_NAME", "from-env"),
            ("VIGIL_MAX_MODEL_LEN", "512"),
        ],
    );
    let (status, _, body) = vigil.get("/v1/models", None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "from-env");
    assert_eq!(v["data"][0]["max_model_len"], 512);
}
