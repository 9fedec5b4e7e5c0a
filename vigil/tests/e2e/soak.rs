//! A bounded soak of mixed traffic, after which the server is at rest.
//!
//! A bounded soak: a minute of mixed traffic (completions, streamed chats, clients that vanish
//! mid-stream, bad requests, tokenization, scrapes) from several clients at once. Afterwards the
//! server is at rest: no request running or waiting, no KV block held, resident memory within a
//! bound of where it stood after a warm-up (plus the KV cache, whose pages fill as it is used),
//! and no error in its log.

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{http_post, sample, wait_for, Vigil};

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A small deterministic generator (xorshift), one per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One client's round: a request of a kind chosen at random.
fn round(v: &Vigil, rng: &mut Rng) {
    let completions = v.url("/v1/completions");
    match rng.below(7) {
        0 => {
            let body = format!(
                r#"{{"prompt": "The capital of France is", "max_tokens": {}, "temperature": 0.7}}"#,
                1 + rng.below(24)
            );
            let (status, text) = http_post(&completions, body.as_bytes(), &[]);
            assert_eq!(status, 200, "{text}");
        }
        1 => {
            let body = r#"{"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}}"#;
            let (status, text) = http_post(&v.url("/v1/chat/completions"), body.as_bytes(), &[]);
            assert_eq!(status, 200, "{text}");
            assert!(text.contains("[DONE]"), "{text}");
        }
        2 => {
            // A client that goes away mid-stream.
            let stream = common::stream_until_first_event(
                v.addr,
                r#"{"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": true, "stream": true}"#,
            );
            std::thread::sleep(Duration::from_millis(rng.below(200)));
            drop(stream);
        }
        3 => {
            let bad: &[&[u8]] = &[
                b"{not json",
                br#"{"prompt": "x", "max_tokens": -1}"#,
                br#"{"prompt": [99999999]}"#,
                br#"{"prompt": "x", "suffix": "y"}"#,
                br#"{"prompt": "x"} trailing"#,
            ];
            let body = bad[rng.below(bad.len() as u64) as usize];
            let (status, text) = http_post(&completions, body, &[]);
            assert_eq!(status, 400, "{text}");
        }
        4 => {
            let (status, _) = http_post(
                &v.url("/tokenize"),
                br#"{"messages": [{"role": "user", "content": "Hi there"}]}"#,
                &[],
            );
            assert_eq!(status, 200);
        }
        5 => {
            let _ = v.metrics();
        }
        _ => {
            // Half a request: headers and part of a body, then gone.
            let mut s = std::net::TcpStream::connect(v.addr).unwrap();
            let _ = s.write_all(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro",
            );
        }
    }
}

#[test]
fn a_minute_of_mixed_traffic_leaves_the_server_at_rest() {
    // A 64 MiB KV cache: its pages are touched as blocks get used, so it counts in full
    // towards the memory bound below, whatever the warm-up reached.
    let kv_cache = 64u64 << 20;
    let v = Vigil::serve(&[
        "--served-model-name",
        "m",
        "--kv-cache-memory-bytes",
        "64M",
        "--max-model-len",
        "1024",
    ]);
    let l = "{engine=\"0\",model_name=\"m\"}";
    // Warm up, then take the baseline.
    let mut rng = Rng(7);
    for _ in 0..20 {
        round(&v, &mut rng);
    }
    let baseline = rss(v.pid());
    let until = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        for i in 0..6u64 {
            let v = &v;
            scope.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1));
                let mut rounds = 0;
                while Instant::now() < until {
                    round(v, &mut rng);
                    rounds += 1;
                }
                rounds
            });
        }
    });
    // At rest: nothing running or waiting, no KV block held.
    wait_for("the engine to be idle", Duration::from_secs(30), || {
        let m = v.metrics();
        let at_rest = sample(&m, &format!("vllm:num_requests_running{l}")) == Some(0.0)
            && sample(&m, &format!("vllm:num_requests_waiting{l}")) == Some(0.0)
            && sample(&m, &format!("vllm:kv_cache_usage_perc{l}")) == Some(0.0);
        at_rest.then_some(())
    });
    let m = v.metrics();
    let finished: f64 = m
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(finished > 100.0, "only {finished} requests finished");
    let after = rss(v.pid());
    eprintln!(
        "{finished} engine requests; RSS {} MiB after warm-up, {} MiB after the soak",
        baseline >> 20,
        after >> 20
    );
    assert!(
        after < baseline + kv_cache + (128 << 20),
        "resident memory grew from {} MiB to {} MiB",
        baseline >> 20,
        after >> 20
    );
    let log = v.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "errors in the log: {errors:#?}");
}
