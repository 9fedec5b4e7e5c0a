//! `vigil probe`: a node agent for an engine Vigil does not run.
//!
//! `vigil probe`: a node agent for an engine Vigil does not run (a vLLM server, or anything that
//! speaks the Prometheus text format). When its own `/metrics` is scraped it fetches the
//! engine's ([`upstream`]: one fetch shared by concurrent scrapes, waited for only as long as
//! the scraper allows), parses it and keeps the valid lines of the families with the configured
//! prefixes (default `vllm:`), adds the `dynamo_namespace`/`dynamo_component`/`dynamo_endpoint`
//! labels without overwriting the engine's ([`passthrough`]), and appends them after its own
//! series (Dynamo's uptime, probe status, GPU, the engine process's scheduling latency), as
//! Dynamo's engine-metrics callback appends them after the runtime's. Whatever the engine does,
//! the agent's own series are served: a bad line of the engine's costs that line, a slow engine
//! costs freshness, a dead one its series. The eBPF probe follows the engine's process as it
//! comes, goes and restarts.

mod engine_check;
pub(crate) mod find_pid;
pub(crate) mod passthrough;
mod upstream;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use exporter::catalog::agent::{
    ENGINE_EXPOSITION_PROBLEMS, ENGINE_SCRAPE_AGE, ENGINE_SCRAPE_ERRORS, EXPOSITION_PROBLEMS,
    SCRAPE_FAILURES,
};
use exporter::catalog::MetricDef;
use exporter::{render, Format};
use exporter::{Exporter, ExporterConfig};

use crate::cli::ProbeArgs;
use passthrough::Relay;
use upstream::{EnginePart, Upstream};

/// How long a scrape without `X-Prometheus-Scrape-Timeout-Seconds` (a person, a script) waits
/// for the engine.
const DEFAULT_BUDGET: Duration = Duration::from_secs(5);
/// How many scrapes compress their answer at once (the engine's part may be megabytes).
const CONCURRENT_COMPRESSIONS: usize = 4;

struct Agent {
    exporter: Exporter,
    upstream: Arc<Upstream>,
    compressions: tokio::sync::Semaphore,
}

pub(crate) async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let url = args.engine_metrics_url.clone();
    let port = engine_port(&url)?;
    let exporter = Exporter::new(ExporterConfig::new(2048));
    exporter
        .install()
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    server::export_uptime(&exporter, Instant::now());
    // The engine's process as given, else whichever listens on its port, looked for again
    // whenever the one watched is gone.
    let fixed = args.engine_pid;
    let find = move || fixed.or_else(|| find_pid::listening_on(port));
    let _probes = probes::start(
        &exporter,
        &args.probes.config(probes::Target::Follow(Arc::new(find))),
    );
    // At 0 from the start: increase() over a counter that first appears at 1 sees no rise.
    for reason in SCRAPE_FAILURES {
        let _ =
            exporter.set_counter_total(&ENGINE_SCRAPE_ERRORS, &[("reason", (*reason).into())], 0.0);
    }
    for reason in EXPOSITION_PROBLEMS {
        let _ = exporter.set_counter_total(
            &ENGINE_EXPOSITION_PROBLEMS,
            &[("reason", (*reason).into())],
            0.0,
        );
    }
    let names = args.dynamo.names();
    let relay = Relay::new(
        args.metric_prefix.clone(),
        own_families(),
        vec![
            ("dynamo_namespace".into(), names.namespace.clone()),
            ("dynamo_component".into(), names.component.clone()),
            ("dynamo_endpoint".into(), names.endpoint.clone()),
        ],
    );
    let agent = Arc::new(Agent {
        upstream: Arc::new(Upstream::new(
            url,
            relay,
            exporter.clone(),
            args.engine_stale_after,
        )),
        exporter,
        compressions: tokio::sync::Semaphore::new(CONCURRENT_COMPRESSIONS),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(agent);
    let listener = server::bind(args.host, args.port).await?;
    let mut signals = server::Signals::install();
    let stop = async move { signals.next().await };
    tracing::info!(engine = %args.engine_metrics_url, "listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("HTTP server failed")
}

/// The families the agent exports itself (never copied from the engine): Dynamo's uptime,
/// the probes', the GPUs', the host scheduler's and its own.
fn own_families() -> HashSet<String> {
    use exporter::catalog::{agent, dynamo, gpu, probe, sched};
    [
        &[&dynamo::COMPONENT_UPTIME][..],
        probe::ALL,
        gpu::ALL,
        sched::ALL,
        agent::ALL,
    ]
    .into_iter()
    .flatten()
    .map(|def| def.name.to_owned())
    .collect()
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

/// How long a scrape may wait for the engine: what its scraper allows
/// (`X-Prometheus-Scrape-Timeout-Seconds`), less a margin to render and send the answer.
fn budget(headers: &HeaderMap) -> Duration {
    let Some(timeout) = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
    else {
        return DEFAULT_BUDGET;
    };
    let margin = (timeout / 4.0).min(0.5);
    Duration::from_secs_f64((timeout - margin).min(upstream::FETCH_TIMEOUT.as_secs_f64()))
}

/// `# HELP`, `# TYPE` and the one sample of a gauge without labels.
fn gauge_text(def: &MetricDef, value: f64) -> String {
    let mut out = format!("# HELP {} ", def.name);
    exporter::write_help(&mut out, def.help, false);
    out.push_str(&format!("\n# TYPE {} gauge\n{} ", def.name, def.name));
    exporter::write_float(&mut out, value);
    out.push('\n');
    out
}

async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let engine = agent.upstream.engine_part(budget(&headers)).await;
    // The agent's own series first (always Prometheus text: the engine's part is), then how
    // old the engine's are, then the engine's.
    let mut own = render(&agent.exporter, Format::Prometheus);
    if let Some(part) = &engine {
        own.push_str(&gauge_text(
            &ENGINE_SCRAPE_AGE,
            part.fetched_at.elapsed().as_secs_f64(),
        ));
    }
    respond(&agent, own, engine, &headers).await
}

/// The answer: the agent's part and the engine's shared one, sent as they are or compressed
/// into one gzip stream (a few at a time).
async fn respond(
    agent: &Agent,
    own: String,
    engine: Option<Arc<EnginePart>>,
    headers: &HeaderMap,
) -> Response {
    let content_type = Format::Prometheus.content_type();
    if !exporter::accepts_gzip(headers) {
        return plain(content_type, own, engine);
    }
    let Ok(_permit) = agent.compressions.acquire().await else {
        return plain(content_type, own, engine);
    };
    let compressed = tokio::task::spawn_blocking(move || {
        let text = engine.as_ref().map_or(&b""[..], |p| &p.text[..]);
        match exporter::gzip_parts(&[own.as_bytes(), text]) {
            Some(body) => Ok(body),
            None => Err((own, engine)),
        }
    })
    .await;
    match compressed {
        Ok(Ok(body)) => exporter::gzipped(content_type, body),
        // Compression failed: the plain text is a valid answer too.
        Ok(Err((own, engine))) => plain(content_type, own, engine),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn plain(content_type: &'static str, own: String, engine: Option<Arc<EnginePart>>) -> Response {
    let mut chunks = vec![Bytes::from(own)];
    if let Some(part) = engine {
        // Shared, not copied: every concurrent scrape sends the same bytes.
        chunks.push(part.text.clone());
    }
    (
        [(CONTENT_TYPE, content_type), (VARY, "Accept-Encoding")],
        Body::new(Chunks(chunks.into())),
    )
        .into_response()
}

/// A body of a few shared buffers, sent one after the other, its length known up front.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

/// 200 when the engine answers with its metrics (or did, recently enough, while a slow fetch
/// runs), else 503.
async fn health(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let up = agent.upstream.engine_part(budget(&headers)).await.is_some();
    let (status, word) = if up {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "notready")
    };
    (status, serde_json::json!({"status": word}).to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use std::time::Duration;

    #[test]
    fn a_scrape_waits_for_the_engine_within_its_scrapers_timeout() {
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "X-Prometheus-Scrape-Timeout-Seconds",
                HeaderValue::from_str(t).unwrap(),
            );
            super::budget(&h)
        };
        assert_eq!(with("4"), Duration::from_secs_f64(3.5));
        assert_eq!(with("1"), Duration::from_secs_f64(0.75));
        assert_eq!(with("300"), super::upstream::FETCH_TIMEOUT);
        assert_eq!(with("nonsense"), super::DEFAULT_BUDGET);
        assert_eq!(with("-1"), super::DEFAULT_BUDGET);
        assert_eq!(super::budget(&HeaderMap::new()), super::DEFAULT_BUDGET);
    }

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
