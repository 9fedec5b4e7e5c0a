//! Whether what the engine answered is its metrics, not merely an HTTP 200.
//!
//! Whether what the engine answered is its metrics: "up" means a Prometheus exposition with at
//! least one sample of a family the agent passes through, not merely an HTTP 200 (an HTML page,
//! a proxy's error page or another exporter's metrics would otherwise count as an engine that is
//! up).

use exporter::Exposition;

use super::passthrough::Relay;

/// Why an answer is not the engine's metrics: a value of the scrape errors' `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotTheEngine {
    /// No line of the body is a valid sample of the text format.
    NotExposition,
    /// Samples, but none of a family the agent passes through.
    NoEngineFamilies,
}

impl NotTheEngine {
    pub(super) fn reason(self) -> &'static str {
        match self {
            NotTheEngine::NotExposition => "not_exposition",
            NotTheEngine::NoEngineFamilies => "no_engine_families",
        }
    }
}

/// Checks that `exposition` has a sample of a family `relay` passes.
pub(super) fn check(exposition: &Exposition, relay: &Relay) -> Result<(), NotTheEngine> {
    if relay.has_engine_samples(exposition) {
        Ok(())
    } else if exposition.has_samples() {
        Err(NotTheEngine::NoEngineFamilies)
    } else {
        Err(NotTheEngine::NotExposition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(body: &str) -> Result<(), NotTheEngine> {
        let relay = Relay::new(vec!["vllm:".into()], Default::default(), vec![]);
        check(&Exposition::parse(body.as_bytes(), |_| false), &relay)
    }

    #[test]
    fn an_engine_exposition_passes() {
        let body = "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 0.0\n";
        assert_eq!(check_text(body), Ok(()));
        assert_eq!(check_text("vllm:x 1\n"), Ok(()));
        assert_eq!(check_text("vllm:x{a=\"}\"} +Inf 1700000000\n"), Ok(()));
    }

    #[test]
    fn a_page_or_another_exporter_is_not_the_engine() {
        let html = "<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n";
        assert_eq!(check_text(html), Err(NotTheEngine::NotExposition));
        assert_eq!(check_text(""), Err(NotTheEngine::NotExposition));
        assert_eq!(
            check_text("{\"ok\": true}\n"),
            Err(NotTheEngine::NotExposition)
        );
        // Only metadata, or only broken samples, of the engine's families.
        assert_eq!(
            check_text("# TYPE vllm:x gauge\nvllm:x{ 1\n"),
            Err(NotTheEngine::NotExposition)
        );
        let node_exporter = "# TYPE node_load1 gauge\nnode_load1 0.5\n";
        assert_eq!(
            check_text(node_exporter),
            Err(NotTheEngine::NoEngineFamilies)
        );
    }
}
