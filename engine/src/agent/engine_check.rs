//! Whether what the engine answered is its metrics: "up" means a Prometheus exposition with at
//! least one family of the configured prefixes, not merely an HTTP 200 (an HTML page, a proxy's
//! error page or another exporter's metrics would otherwise count as an engine that is up).

/// Why an answer is not the engine's metrics: a value of the scrape errors' `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTheEngine {
    /// No line of the body is a sample of the text format.
    NotExposition,
    /// Samples, but none of a family the agent passes through.
    NoEngineFamilies,
}

impl NotTheEngine {
    pub fn reason(self) -> &'static str {
        match self {
            NotTheEngine::NotExposition => "not_exposition",
            NotTheEngine::NoEngineFamilies => "no_engine_families",
        }
    }
}

/// A metric name of the text format: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The metric name of a sample line (`name{labels} value [timestamp]` or `name value`), if the
/// line is one.
fn sample_name(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let rest = match line[name_end..].strip_prefix('{') {
        Some(labels) => &labels[labels.rfind('}')? + 1..],
        None => &line[name_end..],
    };
    let value = rest.split_whitespace().next()?;
    let numeric = value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN");
    (is_metric_name(name) && numeric).then_some(name)
}

/// Checks that `body` is an exposition with a family of one of `prefixes`.
pub fn check(body: &str, prefixes: &[String]) -> Result<(), NotTheEngine> {
    let mut any_sample = false;
    for name in body.lines().filter_map(sample_name) {
        any_sample = true;
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            return Ok(());
        }
    }
    Err(if any_sample {
        NotTheEngine::NoEngineFamilies
    } else {
        NotTheEngine::NotExposition
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vllm() -> Vec<String> {
        vec!["vllm:".into()]
    }

    #[test]
    fn an_engine_exposition_passes() {
        let body = "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 0.0\n";
        assert_eq!(check(body, &vllm()), Ok(()));
        assert_eq!(check("vllm:x 1\n", &vllm()), Ok(()));
        assert_eq!(check("vllm:x{a=\"}\"} +Inf 1700000000\n", &vllm()), Ok(()));
    }

    #[test]
    fn a_page_or_another_exporter_is_not_the_engine() {
        let html = "<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n";
        assert_eq!(check(html, &vllm()), Err(NotTheEngine::NotExposition));
        assert_eq!(check("", &vllm()), Err(NotTheEngine::NotExposition));
        assert_eq!(
            check("{\"ok\": true}\n", &vllm()),
            Err(NotTheEngine::NotExposition)
        );
        let node_exporter = "# TYPE node_load1 gauge\nnode_load1 0.5\n";
        assert_eq!(
            check(node_exporter, &vllm()),
            Err(NotTheEngine::NoEngineFamilies)
        );
    }
}
