//! The `prometheus/` folder checked with the real promtool.
//!
//! The `prometheus/` folder with the real promtool: the fleet's scrape configuration and rule
//! files check clean, the alert rules pass their unit tests (`promtool test rules`), and every
//! series they read is one the catalog defines.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../prometheus")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(folder())
        .output()
        .expect("promtool (Debian package prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_scrape_config_and_its_rule_files_check_clean() {
    let (ok, out) = promtool(&["check", "config", "prometheus.yml"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SUCCESS: 11 rules found") && out.contains("SUCCESS: 15 rules found"),
        "{out}"
    );
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let (ok, out) = promtool(&["test", "rules", "tests/vigil-alerts.test.yml"]);
    assert!(ok, "{out}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let alerts = std::fs::read_to_string(folder().join("rules/vigil-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(folder().join("tests/vigil-alerts.test.yml")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(names.len(), 15);
    for name in names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no test"
        );
    }
}

#[test]
fn the_catalog_check_knows_names_from_others() {
    let found = common::series_in_promql(
        r#"rate(vllm:generation_tokens_total{model_name="vigil_x"}[5m]) / vllm:bogus_total + vllm:kv_cache_usage_perc_total"#,
    );
    let names: Vec<(&str, bool)> = found
        .iter()
        .map(|(s, d)| (s.as_str(), d.is_some()))
        .collect();
    assert_eq!(
        names,
        [
            ("vllm:generation_tokens_total", true),
            ("vllm:bogus_total", false),
            ("vllm:kv_cache_usage_perc_total", false),
        ]
    );
}

#[test]
fn the_rules_read_only_series_the_catalog_defines() {
    for file in ["rules/vigil-recording.yml", "rules/vigil-alerts.yml"] {
        let text = std::fs::read_to_string(folder().join(file)).unwrap();
        let mut read = 0;
        for line in text.lines() {
            let Some(expr) = line.trim().strip_prefix("expr: ") else {
                continue;
            };
            for (series, def) in common::series_in_promql(expr) {
                assert!(
                    def.is_some(),
                    "{file}: {series} is not in the catalog ({expr})"
                );
                read += 1;
            }
        }
        assert!(read > 5, "{file}: found the series ({read})");
    }
}
