//! `vigil probe`: a node agent for an engine Vigil does not run (a vLLM server, or anything that
//! speaks the Prometheus text format). At each scrape of its own `/metrics` it scrapes the
//! engine's, keeps the families with the configured prefixes (default `vllm:`), adds the
//! `dynamo_namespace`/`dynamo_component`/`dynamo_endpoint` labels without overwriting the
//! engine's, and appends them after its own series (Dynamo's uptime, probe status, GPU, the
//! engine process's scheduling latency), as Dynamo's engine-metrics callback appends them after the runtime's.

mod engine_check;
pub mod find_pid;
pub mod passthrough;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use exporter::catalog::agent::{
    ENGINE_SCRAPE_DURATION, ENGINE_SCRAPE_ERRORS, ENGINE_UP, SCRAPE_FAILURES,
};
use exporter::render::{render, Format};
use exporter::{Exporter, ExporterConfig};

use crate::api::dynamo::DynamoNames;
use crate::cli::ProbeArgs;

/// How long one scrape of the engine may take before the agent answers without it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

struct Agent {
    exporter: Exporter,
    url: String,
    prefixes: Vec<String>,
    names: DynamoNames,
    http: ureq::Agent,
    /// Failed scrapes by reason.
    errors: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let url = args.engine_metrics_url.clone();
    let port = engine_port(&url)?;
    let exporter = Exporter::new(ExporterConfig::new(2048));
    exporter
        .install()
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    crate::api::dynamo::export_uptime(&exporter, Instant::now());
    let pid = match args.engine_pid {
        Some(pid) => Some(pid),
        None => {
            let found = find_pid::listening_on(port);
            match found {
                Some(pid) => tracing::info!(pid, port, "engine process found from its port"),
                None => tracing::warn!(
                    port,
                    "no local process listens on the engine's port; give --engine-pid to watch it"
                ),
            }
            found
        }
    };
    let mut config = args.probes.config(pid.unwrap_or(0));
    // Never watch every process for want of the engine's.
    config.ebpf &= pid.is_some();
    let _probes = probes::start(&exporter, &config);
    if pid.is_none() && !args.probes.disable_ebpf_probe {
        probes::status::set(
            &exporter,
            probes::status::Probe::Ebpf,
            &probes::status::State::off("no_target", "the engine's process was not found"),
        );
    }
    // At 0 from the start: increase() over a counter that first appears at 1 sees no rise.
    for reason in SCRAPE_FAILURES {
        let _ =
            exporter.set_counter_total(&ENGINE_SCRAPE_ERRORS, &[("reason", (*reason).into())], 0.0);
    }
    let agent = Arc::new(Agent {
        exporter,
        url,
        prefixes: args.metric_prefix.clone(),
        names: args.dynamo.names(),
        http: ureq::Agent::config_builder()
            .timeout_global(Some(SCRAPE_TIMEOUT))
            .build()
            .into(),
        errors: Default::default(),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(agent);
    let listener = crate::server::bind(args.host, args.port).await?;
    let mut signals = crate::server::Signals::install();
    let stop = async move { signals.next().await };
    tracing::info!(engine = %args.engine_metrics_url, "listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("HTTP server failed")
}

/// The port of the engine's metrics URL (`http://host:port/...`).
fn engine_port(url: &str) -> anyhow::Result<u16> {
    let rest = url.strip_prefix("http://").with_context(|| {
        format!("--engine-metrics-url {url:?}: expected http://HOST:PORT/metrics")
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((_, port)) => port
            .parse()
            .with_context(|| format!("--engine-metrics-url {url:?}: {port:?} is not a port")),
        None => Ok(80),
    }
}

impl Agent {
    /// Scrapes the engine; `None` (counted by reason, logged) when it fails or answers
    /// something that is not its metrics.
    fn scrape_engine(&self) -> Option<String> {
        let started = Instant::now();
        let result = self
            .http
            .get(&self.url)
            .header("Accept", "text/plain; version=0.0.4")
            .call()
            .map_err(|e| {
                let reason = match &e {
                    ureq::Error::StatusCode(_) => "http_status",
                    ureq::Error::Timeout(_) => "timeout",
                    _ => "unreachable",
                };
                (reason, e.to_string())
            })
            .and_then(|mut r| {
                r.body_mut()
                    .read_to_string()
                    .map_err(|e| ("unreachable", e.to_string()))
            })
            .and_then(|text| match engine_check::check(&text, &self.prefixes) {
                Ok(()) => Ok(text),
                Err(not) => Err((
                    not.reason(),
                    format!("the answer is not the engine's metrics ({})", not.reason()),
                )),
            });
        let e = &self.exporter;
        let _ = e.set_gauge(
            &ENGINE_SCRAPE_DURATION,
            &[],
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(text) => {
                let _ = e.set_gauge(&ENGINE_UP, &[], 1.0);
                Some(text)
            }
            Err((reason, err)) => {
                tracing::warn!(url = %self.url, reason, "engine scrape failed: {err}");
                let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
                let n = errors.entry(reason).or_default();
                *n += 1;
                let _ = e.set_gauge(&ENGINE_UP, &[], 0.0);
                let _ = e.set_counter_total(
                    &ENGINE_SCRAPE_ERRORS,
                    &[("reason", reason.into())],
                    *n as f64,
                );
                None
            }
        }
    }
}

async fn metrics(State(agent): State<Arc<Agent>>, headers: axum::http::HeaderMap) -> Response {
    let engine = {
        let agent = Arc::clone(&agent);
        tokio::task::spawn_blocking(move || agent.scrape_engine())
            .await
            .ok()
            .flatten()
    };
    // The agent's own series first (always Prometheus text: the engine's part is), then the
    // engine's.
    let mut body = render(&agent.exporter, Format::Prometheus);
    if let Some(text) = engine {
        let n = &agent.names;
        let inject = [
            ("dynamo_namespace", n.namespace.as_str()),
            ("dynamo_component", n.component.as_str()),
            ("dynamo_endpoint", n.endpoint.as_str()),
        ];
        // The agent's own families are not copied from the engine: each family once.
        let own: std::collections::HashSet<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        body.push_str(&passthrough::passthrough(
            &text,
            &agent.prefixes,
            &own,
            &inject,
        ));
    }
    exporter::route::encoded(Format::Prometheus.content_type(), body, &headers)
}

/// 200 when the engine answered the last scrape, else 503.
async fn health(State(agent): State<Arc<Agent>>) -> Response {
    let up = {
        let agent = Arc::clone(&agent);
        tokio::task::spawn_blocking(move || agent.scrape_engine().is_some())
            .await
            .unwrap_or(false)
    };
    let (status, word) = if up {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "notready")
    };
    (status, serde_json::json!({"status": word}).to_string()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_port_from_url() {
        assert_eq!(
            super::engine_port("http://127.0.0.1:8000/metrics").unwrap(),
            8000
        );
        assert_eq!(super::engine_port("http://localhost/metrics").unwrap(), 80);
        assert!(super::engine_port("https://x:1/metrics").is_err());
        assert!(super::engine_port("http://x:port/metrics").is_err());
    }
}
