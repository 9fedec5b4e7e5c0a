//! The HTTP server's limits, end to end.
//!
//! The HTTP server's limits, end to end: idle connections are closed, so are requests that do
//! not arrive within the read timeout, connections beyond the cap are refused at once, running out of file descriptors is logged, counted and survived, and
//! an absurd `Content-Length` is refused before the body is read. Each turned-away connection is
//! counted in `vigil_http_connections_dropped_total`.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{sample, wait_for, Vigil};

fn dropped(v: &Vigil, reason: &str) -> f64 {
    sample(
        &v.metrics(),
        &format!("vigil_http_connections_dropped_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_and_excess_connections_are_closed_and_counted() {
    let v = Vigil::serve(&[
        "--max-connections",
        "8",
        "--http-idle-timeout",
        "1",
        "--http-read-timeout",
        "1",
    ]);
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(v.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The ninth is closed at once.
    let mut ninth = TcpStream::connect(v.addr).unwrap();
    assert!(closed_within(&mut ninth, Duration::from_millis(500)));
    // The eight that never spoke are closed after the idle timeout.
    let started = Instant::now();
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(5)));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The server answers again, and counted both.
    assert_eq!(v.get("/health", None).0, 200);
    assert!(dropped(&v, "over_limit") >= 1.0);
    assert!(dropped(&v, "idle") >= 8.0);
    assert!(v.log().contains("--max-connections reached"), "{}", v.log());
    // A client trickling its headers, or its body, is cut off at the read timeout.
    let mut slow_headers = TcpStream::connect(v.addr).unwrap();
    let mut slow_body = TcpStream::connect(v.addr).unwrap();
    slow_body
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
        .unwrap();
    let started = Instant::now();
    let mut trickled = 0;
    let header = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
    while started.elapsed() < Duration::from_secs(5) {
        if slow_headers
            .write_all(&header[trickled % header.len()..][..1])
            .is_err()
        {
            break;
        }
        trickled += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(closed_within(&mut slow_headers, Duration::from_secs(2)));
    // (The body's reader learns of it: the client may get an error answer before the close.)
    slow_body
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = Vec::new();
    let closed = slow_body.read_to_end(&mut answer);
    assert!(
        closed.is_ok()
            || matches!(closed, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?}: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(dropped(&v, "slow_request") >= 2.0);
    // A connection with a request in progress is not idle, however long its answer takes: a
    // streamed chat sends its role chunk at once, then nothing for the seconds of a long
    // prefill, then its tokens.
    let long = "the cat sat on the mat ".repeat(100);
    let body = serde_json::json!({"messages": [{"role": "user", "content": long}], "max_tokens": 4, "stream": true});
    let (status, text) = common::http_post(
        &v.url("/v1/chat/completions"),
        body.to_string().as_bytes(),
        &[],
    );
    assert_eq!(status, 200);
    assert!(text.contains("data: [DONE]"), "{text}");
    let (status, _) = common::http_post(
        &v.url("/v1/completions"),
        br#"{"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true}"#,
        &[],
    );
    assert_eq!(status, 200);
}

#[test]
fn running_out_of_file_descriptors_is_logged_counted_and_survived() {
    // 96 descriptors, and a connection cap above what they allow.
    let v = Vigil::serve_as(
        &["prlimit", "--nofile=96:96", "--"],
        &["--max-connections", "1000"],
    );
    let flood: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(v.addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(flood);
    wait_for(
        "the server to answer again",
        Duration::from_secs(10),
        || (common::http_get(&v.url("/health"), None).0 == 200).then_some(()),
    );
    assert!(dropped(&v, "out_of_files") >= 1.0, "{}", v.metrics());
    assert!(v.log().contains("out of file descriptors"), "{}", v.log());
}

#[test]
fn an_absurd_content_length_is_refused_before_the_body() {
    let v = Vigil::serve(&[]);
    let mut s = TcpStream::connect(v.addr).unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).expect("an answer without the body");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":413"), "{answer}");
}
