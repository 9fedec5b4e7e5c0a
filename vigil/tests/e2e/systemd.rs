//! The systemd unit checked with the real tools and the real binary.
//!
//! The systemd unit in `systemd/`, checked with the real tools and the real binary:
//! `systemd-analyze verify` and `security`, the unit's `ExecStart=` line run as written with the
//! environment file and the unit's user and capabilities, and every system call Vigil makes
//! (traced with strace) inside the unit's `SystemCallFilter=`.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::notify::NotifySocket;
use common::*;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` in the unit (every line that sets it, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// The binary the unit in the repository names.
const UNIT_BINARY: &str = "/usr/local/bin/vigil";

/// The unit as installed with the binary cargo built for these tests.
fn installed_unit(dir: &Path) -> PathBuf {
    let unit = repo_file("systemd/vigil.service").replace(UNIT_BINARY, VIGIL);
    let path = dir.join("vigil.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_unit_verifies_clean_and_its_exposure_is_at_most_2_5() {
    let dir = tempfile::tempdir().unwrap();
    let unit = installed_unit(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for vigil.service"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score: {line}"));
    println!("{line}");
    assert!(score <= 2.5, "{line}\n{text}");
}

/// `KEY=VALUE` lines of the environment file (comments and blanks skipped).
fn env_file() -> Vec<(String, String)> {
    repo_file("systemd/vigil.env")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// `setpriv` arguments that run a command as the unit would: another user, no groups, and only
/// the unit's capabilities (bounding set and ambient).
fn as_the_unit(unit: &str) -> Vec<String> {
    let caps: Vec<String> = unit_values(unit, "AmbientCapabilities")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding: Vec<String> = unit_values(unit, "CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    assert!(!caps.is_empty() && caps.iter().all(|c| bounding.contains(c)));
    let plus = |v: &[String]| {
        v.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all,{}", plus(&caps)),
        format!("--ambient-caps=-all,{}", plus(&caps)),
        format!("--bounding-set=-all,{}", plus(&bounding)),
        "--no-new-privs".into(),
    ]
}

#[test]
fn the_exec_start_line_runs_as_written_as_the_units_user_with_its_capabilities() {
    let unit = repo_file("systemd/vigil.service");
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart= line");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(words[0], UNIT_BINARY);
    let model = require_model();
    // Run as `nobody` with the unit's capabilities (as the probe tests do, this needs a
    // checkout that others may read, which CI's is).
    let wrapper = as_the_unit(&unit);
    let mut command = Command::new(&wrapper[0]);
    command.args(&wrapper[1..]).arg(VIGIL).args(&words[1..]);
    command.env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env_file() {
        command.env(k, v);
    }
    let notify = NotifySocket::new();
    // The unit's user sends to systemd's socket; here, to ours.
    for path in [notify.path_buf().parent().unwrap(), notify.path_buf()] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
    }
    // Only what a test machine must differ in: where the model is and a free loopback port.
    command
        .env("VIGIL_MODEL", model)
        .env("VIGIL_HOST", "127.0.0.1")
        .env("VIGIL_PORT", "0")
        .env("NOTIFY_SOCKET", notify.path());
    let mut vigil = Vigil::spawn(command);
    notify.until("READY=1", Duration::from_secs(10));
    let (status, body) = http_post(
        &vigil.url("/v1/completions"),
        br#"{"prompt": "The capital of France is", "max_tokens": 4}"#,
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let metrics = vigil.metrics();
    assert_eq!(
        sample(
            &metrics,
            "vigil_probe_up{probe=\"ebpf\",reason=\"running\"}"
        ),
        Some(1.0),
        "the unit's capabilities are enough for the eBPF probe:\n{}",
        vigil.log()
    );
    let status = vigil.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    notify.until("STOPPING=1", Duration::from_secs(1));
}

/// The system calls in a systemd filter set, as `systemd-analyze syscall-filter` lists them
/// (sets it includes resolved in turn).
fn filter_set(set: &str, into: &mut BTreeSet<String>) {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", set])
        .output()
        .unwrap();
    assert!(out.status.success(), "syscall-filter {set}");
    // The first line names the set itself; then its members, one per line.
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            filter_set(item, into);
        } else {
            into.insert(item.to_owned());
        }
    }
}

#[test]
fn every_system_call_vigil_makes_is_inside_the_units_filter() {
    let unit = repo_file("systemd/vigil.service");
    let mut allowed = BTreeSet::new();
    for value in unit_values(&unit, "SystemCallFilter") {
        assert!(!value.starts_with('~'), "an allow list: {value}");
        for item in value.split_whitespace() {
            if item.starts_with('@') {
                filter_set(item, &mut allowed);
            } else {
                allowed.insert(item.to_owned());
            }
        }
    }
    assert!(allowed.len() > 100, "the filter sets resolve: {allowed:?}");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let trace_path = trace.to_str().unwrap();
    let mut vigil = Vigil::serve_as(
        &[
            "strace",
            "-f",
            "-qq",
            "-o",
            trace_path,
            "-e",
            "trace=all",
            "--",
        ],
        &[],
    );
    let (status, _) = http_post(
        &vigil.url("/v1/chat/completions"),
        br#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}"#,
        &[],
    );
    assert_eq!(status, 200);
    let _ = vigil.metrics();
    // SIGTERM goes to vigil, strace's child, so that the drain and exit are traced too.
    let strace_pid = vigil.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let vigil_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the traced vigil.
    unsafe { libc::kill(vigil_pid, libc::SIGTERM) };
    let status = vigil.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let mut used = BTreeSet::new();
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        // "<pid> name(args...) = result", or "<pid> <... name resumed>".
        let rest = line.split_once(' ').map_or("", |(_, r)| r).trim_start();
        if let Some(name) = rest.split('(').next() {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                used.insert(name.to_owned());
            }
        }
    }
    assert!(
        used.contains("bpf") && used.contains("epoll_wait"),
        "{used:?}"
    );
    let outside: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "system calls outside SystemCallFilter= (they would fail with EPERM): {outside:?}"
    );
}
