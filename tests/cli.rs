//! Command-line errors name the flag and the reason, and exit non-zero without serving.

mod common;

use std::process::Command;

use common::VIGIL;
use exporter::MinorVersion;

fn fails(args: &[&str]) -> String {
    let out = Command::new(VIGIL)
        .arg("serve")
        .args(args)
        .output()
        .expect("run vigil");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn show_hidden_flag_names_the_one_accepted_value() {
    let running = MinorVersion::running();
    let accepted = format!("the only accepted value is {}", running.previous().unwrap());
    for value in ["0.0", "9.9", "abc", "0.1.0", "v0.1", ""] {
        let err = fails(&["--show-hidden-metrics-for-version", value]);
        assert!(
            err.contains("--show-hidden-metrics-for-version"),
            "{value:?}: {err}"
        );
        assert!(err.contains(&accepted), "{value:?}: {err}");
    }
}

#[test]
fn bad_values_name_their_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--max-model-len", "0"],
            "--max-model-len",
            "whole number of tokens",
        ),
        (
            &["--max-model-len", "lots"],
            "--max-model-len",
            "not a token count",
        ),
        (
            &["--custom-histogram-buckets", "{\"nope\": [1]}"],
            "--custom-histogram-buckets",
            "unknown histogram bucket family",
        ),
        (
            &[
                "--custom-histogram-buckets",
                "{\"request_latency\": [2, 1]}",
            ],
            "--custom-histogram-buckets",
            "strictly increasing",
        ),
        (
            &["--custom-histogram-buckets", "not json"],
            "--custom-histogram-buckets",
            "not JSON",
        ),
        (
            &["--gpu-memory-utilization", "1.5"],
            "--gpu-memory-utilization",
            "(0, 1]",
        ),
        (&["--port", "70000"], "--port", "70000"),
        (&["--host", "not-an-ip"], "--host", "not-an-ip"),
    ];
    for (args, flag, reason) in cases {
        let err = fails(args);
        assert!(
            err.contains(flag) && err.contains(reason),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = fails(&["--host", "127.0.0.1", "--port", &port]);
    assert!(
        err.contains("--port") && err.contains("cannot listen"),
        "{err}"
    );
}
