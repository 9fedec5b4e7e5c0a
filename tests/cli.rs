//! Command-line errors name the flag and the reason, and exit non-zero without serving.

mod common;

use std::process::Command;

use common::{require_model, VIGIL};
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
    let err = fails(&[require_model(), "--host", "127.0.0.1", "--port", &port]);
    assert!(
        err.contains("--port") && err.contains("cannot listen"),
        "{err}"
    );
}

#[test]
fn a_missing_model_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    // The default model path is relative: run where it does not exist.
    let out = Command::new(VIGIL)
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let looked = dir.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        err.contains(&format!("looked at {}", looked.display())),
        "{err}"
    );
    assert!(err.contains("cargo xtask fetch-model"), "{err}");
    let err = fails(&["/nonexistent/model.gguf"]);
    assert!(err.contains("looked at /nonexistent/model.gguf"), "{err}");
}

#[test]
fn bad_model_files_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\0\0\0truncated").unwrap();
    let err = fails(&[path.to_str().unwrap()]);
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.json"), r#"{"architectures":["MistralForCausalLM"],"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":8}"#).unwrap();
    let err = fails(&[folder.to_str().unwrap()]);
    assert!(
        err.contains("config.json") && err.contains("MistralForCausalLM"),
        "{err}"
    );
}

#[test]
fn max_model_len_above_the_models_is_refused() {
    let err = fails(&[require_model(), "--max-model-len", "16k"]);
    assert!(
        err.contains("--max-model-len 16000") && err.contains("8192"),
        "{err}"
    );
}
