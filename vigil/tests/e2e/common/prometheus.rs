//! A real Prometheus server for the end-to-end tests.
//!
//! A real Prometheus server (Debian's package) for the end-to-end tests: it scrapes the given
//! targets every second, and its HTTP API answers queries.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_port, http_get, wait_for};

pub(crate) struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub(crate) fn start(targets: &[(&str, String)]) -> Prometheus {
        Self::start_with_rules(targets, &[])
    }

    /// A Prometheus that scrapes nothing and answers from the TSDB in `data` (blocks written
    /// by `promtool tsdb create-blocks-from`).
    pub(crate) fn start_on_data(data: &std::path::Path) -> Prometheus {
        Self::launch(&[], &[], Some(data))
    }

    /// Like [`Prometheus::start`], evaluating the rule files `rules` every second.
    pub(crate) fn start_with_rules(
        targets: &[(&str, String)],
        rules: &[std::path::PathBuf],
    ) -> Prometheus {
        Self::launch(targets, rules, None)
    }

    fn launch(
        targets: &[(&str, String)],
        rules: &[std::path::PathBuf],
        data: Option<&std::path::Path>,
    ) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        if !rules.is_empty() {
            config.push_str("rule_files:\n");
            for r in rules {
                config.push_str(&format!("  - {}\n", r.display()));
            }
        }
        config.push_str("scrape_configs:\n");
        if targets.is_empty() {
            config.push_str("  []\n");
        }
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.map_or_else(|| dir.path().join("data"), |d| d.to_owned())
                    .display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (Debian package prometheus; .ci/run installs it)");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        wait_for("prometheus ready", Duration::from_secs(60), || {
            let url = format!("http://127.0.0.1:{}/-/ready", p.port);
            std::panic::catch_unwind(|| http_get(&url, None).0 == 200)
                .ok()
                .filter(|r| *r)
        });
        p
    }

    pub(crate) fn api(&self, path_and_query: &str) -> Value {
        let (status, _, body) = http_get(
            &format!("http://127.0.0.1:{}{}", self.port, path_and_query),
            None,
        );
        assert_eq!(status, 200, "{path_and_query}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"].clone()
    }

    /// The result of `promql` evaluated at `time` (seconds since the epoch).
    pub(crate) fn query_at(&self, promql: &str, time: f64) -> Vec<Value> {
        let q = encode(promql);
        self.api(&format!("/api/v1/query?query={q}&time={time}"))["result"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub(crate) fn query(&self, promql: &str) -> Vec<Value> {
        let q = encode(promql);
        self.api(&format!("/api/v1/query?query={q}"))["result"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until every job's target has been scraped successfully.
    pub(crate) fn wait_up(&self, jobs: &[&str]) {
        wait_for("all targets up", Duration::from_secs(60), || {
            let targets = self.api("/api/v1/targets");
            let active = targets["activeTargets"].as_array().unwrap();
            let up = jobs.iter().all(|job| {
                active
                    .iter()
                    .any(|t| t["labels"]["job"] == *job && t["health"] == "up")
            });
            if !up {
                for t in active {
                    let err = t["lastError"].as_str().unwrap_or("");
                    assert!(
                        err.is_empty() || err.contains("connection refused"),
                        "scrape of {} failed: {err}",
                        t["labels"]["job"]
                    );
                }
            }
            up.then_some(())
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
