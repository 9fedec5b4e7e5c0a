//! Dynamo's system status server: a second listener with `/metrics`, `/health` and `/live`.
//!
//! Dynamo's system status server: a second HTTP listener, as every Dynamo runtime process has,
//! with `/metrics` (the same exporter as the API port), and `/health` and `/live` answering
//! Dynamo's JSON body with 200 when ready and 503 when not.
//!
//! Configured from the environment as Dynamo is: `DYN_SYSTEM_PORT` (>= 0 enables it; 0 picks a
//! free port and logs it), `DYN_SYSTEM_HOST` (default: the API's `--host`, so a server bound to
//! loopback does not open its status port to the network), and the deprecated
//! `DYN_SYSTEM_ENABLED=true` (port 8081 unless `DYN_SYSTEM_PORT` says otherwise).
//!
//! Readiness is true: `notready` while the model loads and until a warm-up step has run, `ready`
//! while serving, `notready` again once draining for shutdown (or if the engine thread died).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use exporter::Exporter;

use engine::EngineHandle;

/// Where the system server listens, from the environment; `None` when it is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemServerConfig {
    pub host: IpAddr,
    pub port: u16,
}

/// Reads `DYN_SYSTEM_PORT`, `DYN_SYSTEM_HOST` and `DYN_SYSTEM_ENABLED` through `env`; without
/// `DYN_SYSTEM_HOST` the server listens where the API does (`api_host`).
pub(crate) fn config_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    api_host: IpAddr,
) -> anyhow::Result<Option<SystemServerConfig>> {
    let host = match env("DYN_SYSTEM_HOST") {
        Some(h) => h
            .parse()
            .with_context(|| format!("DYN_SYSTEM_HOST={h:?} is not an IP address"))?,
        None => api_host,
    };
    let port: Option<i32> = match env("DYN_SYSTEM_PORT") {
        Some(p) => Some(p.trim().parse().with_context(|| {
            format!("DYN_SYSTEM_PORT={p:?} is not a port number (-1 disables, 0 picks a free port)")
        })?),
        None => None,
    };
    let enabled_flag = env("DYN_SYSTEM_ENABLED")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"));
    if env("DYN_SYSTEM_ENABLED").is_some() {
        tracing::warn!(
            "DYN_SYSTEM_ENABLED is deprecated; the system status server is controlled by DYN_SYSTEM_PORT"
        );
    }
    let port = match (port, enabled_flag) {
        (Some(p), _) if p < 0 => return Ok(None),
        (Some(p), _) => p,
        (None, true) => 8081,
        (None, false) => return Ok(None),
    };
    let port = u16::try_from(port)
        .with_context(|| format!("DYN_SYSTEM_PORT={port} is not a port number"))?;
    Ok(Some(SystemServerConfig { host, port }))
}

/// Why the system status server and the API cannot both listen as configured: the same port
/// on overlapping addresses. Checked before the model loads, so the clash costs no minutes.
pub(crate) fn clash_with_api(
    config: &SystemServerConfig,
    api_host: IpAddr,
    api_port: u16,
) -> Option<String> {
    let overlapping =
        config.host == api_host || config.host.is_unspecified() || api_host.is_unspecified();
    (config.port != 0 && config.port == api_port && overlapping).then(|| {
        format!(
            "DYN_SYSTEM_PORT={} and --port {api_port} name the same port (system status server on \
             {}, API on {api_host}): give one of them another port",
            config.port, config.host
        )
    })
}

/// What `/health` says, shared by the server's phases.
#[derive(Debug, Clone)]
pub(crate) struct Readiness(Arc<AtomicU8>);

const NOT_READY: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(AtomicU8::new(NOT_READY)))
    }
}

impl Readiness {
    pub(crate) fn set_ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }
    pub(crate) fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }
    pub(crate) fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == READY
    }
}

/// The parts the system server reads, filled in as start-up proceeds.
#[derive(Clone, Default)]
pub(crate) struct SystemState {
    pub readiness: Readiness,
    pub exporter: Arc<OnceLock<Exporter>>,
    pub engine: Arc<OnceLock<EngineHandle>>,
    pub endpoint: Arc<OnceLock<String>>,
    started: Arc<OnceLock<Instant>>,
}

impl SystemState {
    pub(crate) fn new() -> Self {
        let s = SystemState::default();
        let _ = s.started.set(Instant::now());
        s
    }

    fn ready(&self) -> bool {
        self.readiness.is_ready() && self.engine.get().is_some_and(|e| e.is_alive())
    }
}

/// Binds the system server and serves it in the background; returns the bound address.
pub(crate) async fn start(
    config: &SystemServerConfig,
    state: SystemState,
) -> anyhow::Result<SocketAddr> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("DYN_SYSTEM_PORT: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("system status server listening on http://{local}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!("system status server failed: {e}");
        }
    });
    Ok(local)
}

pub(crate) fn router(state: SystemState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/live", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "Route not found") })
        .with_state(state)
}

/// Dynamo's health body: `{"status", "uptime": {"secs", "nanos"}, "endpoints": {...}}`, 200
/// when ready, 503 when not.
async fn health(State(state): State<SystemState>) -> Response {
    let ready = state.ready();
    let word = if ready { "ready" } else { "notready" };
    let uptime = state
        .started
        .get()
        .map(Instant::elapsed)
        .unwrap_or_default();
    let endpoint = state
        .endpoint
        .get()
        .cloned()
        .unwrap_or_else(|| "generate".into());
    let body = serde_json::json!({
        "status": word,
        "uptime": {"secs": uptime.as_secs(), "nanos": uptime.subsec_nanos()},
        "endpoints": {endpoint: word},
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body.to_string()).into_response()
}

async fn metrics(State(state): State<SystemState>, headers: HeaderMap) -> Response {
    match state.exporter.get() {
        Some(e) => exporter::respond(e, &headers),
        // Still loading: nothing recorded yet.
        None => String::new().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_same_port_as_the_api_is_a_clash_on_overlapping_addresses() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        let at = |host, port| SystemServerConfig { host, port };
        let err = clash_with_api(&at(lo, 8000), lo, 8000).unwrap();
        assert!(
            err.contains("DYN_SYSTEM_PORT=8000") && err.contains("--port 8000"),
            "{err}"
        );
        assert!(clash_with_api(&at(any, 8000), lo, 8000).is_some());
        assert!(clash_with_api(&at(lo, 8000), any, 8000).is_some());
        assert!(clash_with_api(&at(lo, 8000), other, 8000).is_none());
        assert!(clash_with_api(&at(lo, 8081), lo, 8000).is_none());
        // Port 0 picks a free port: never the API's.
        assert!(clash_with_api(&at(lo, 0), lo, 0).is_none());
    }

    #[test]
    fn the_environment_decides_as_in_dynamo() {
        let any = IpAddr::from([0, 0, 0, 0]);
        let cfg = |vars| config_from_env(&env(vars), any).unwrap();
        assert_eq!(cfg(&[]), None);
        assert_eq!(cfg(&[("DYN_SYSTEM_PORT", "-1")]), None);
        assert_eq!(cfg(&[("DYN_SYSTEM_PORT", "0")]).unwrap().port, 0);
        assert_eq!(cfg(&[("DYN_SYSTEM_PORT", "9090")]).unwrap().port, 9090);
        assert_eq!(cfg(&[("DYN_SYSTEM_ENABLED", "true")]).unwrap().port, 8081);
        assert_eq!(
            cfg(&[("DYN_SYSTEM_ENABLED", "true"), ("DYN_SYSTEM_PORT", "9000")])
                .unwrap()
                .port,
            9000
        );
        let c = cfg(&[("DYN_SYSTEM_PORT", "1"), ("DYN_SYSTEM_HOST", "127.0.0.1")]).unwrap();
        assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
        // Without DYN_SYSTEM_HOST it follows the API's --host.
        assert_eq!(cfg(&[("DYN_SYSTEM_PORT", "1")]).unwrap().host, any);
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let c = config_from_env(&env(&[("DYN_SYSTEM_PORT", "1")]), loopback).unwrap();
        assert_eq!(c.unwrap().host, loopback);
        for bad in [
            &[("DYN_SYSTEM_PORT", "x")][..],
            &[("DYN_SYSTEM_PORT", "70000")],
            &[("DYN_SYSTEM_PORT", "1"), ("DYN_SYSTEM_HOST", "nowhere")],
        ] {
            let vars: &'static [(&'static str, &'static str)] = bad;
            assert!(config_from_env(&env(vars), any).is_err(), "{bad:?}");
        }
    }
}
