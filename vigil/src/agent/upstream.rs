//! The agent's side of the engine: one fetch at a time, its result shared.
//!
//! The agent's side of the engine: its `/metrics` fetched by one request at a time, whatever
//! the number of scrapers, and the result kept, so that a scrape of the agent never waits on the
//! engine longer than its scraper allows and never multiplies the engine's load or the agent's
//! memory.
//!
//! - A scrape that arrives while no fetch runs starts one; one that arrives while a fetch runs
//!   waits for that fetch (coalescing): concurrent scrapes share one upstream request and one
//!   relayed copy of the exposition ([`Bytes`], shared, never copied per scrape).
//! - A scrape waits for the fetch only as long as its budget (from the scraper's
//!   `X-Prometheus-Scrape-Timeout-Seconds`). Past it, it is answered with the last good fetch if
//!   that is younger than `stale_after` (its age in `vigil_agent_engine_scrape_age_seconds`),
//!   else without the engine's series; the fetch runs on, up to [`FETCH_TIMEOUT`], and its result
//!   serves the next scrape.
//! - A fetch that fails answers its scrapes without the engine's series: an engine known to be
//!   down is not served from memory.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use exporter::catalog::agent::{
    ENGINE_EXPOSITION_PROBLEMS, ENGINE_SCRAPE_DURATION, ENGINE_SCRAPE_ERRORS, ENGINE_UP,
};
use exporter::Exporter;
use exporter::Exposition;
use tokio::sync::watch;

use super::engine_check;
use super::passthrough::Relay;

/// How long one fetch of the engine may take in all; scrapes do not wait this long.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest engine exposition the agent reads.
pub(super) const MAX_BODY: u64 = 10 << 20;
/// How often, at most, the agent logs that the engine's exposition had lines it left out.
const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The engine's series as one fetch relayed them.
pub(super) struct EnginePart {
    /// The passed-through families, relabeled, in the text format.
    pub text: Bytes,
    pub fetched_at: Instant,
}

pub(super) struct Upstream {
    url: String,
    http: ureq::Agent,
    relay: Relay,
    exporter: Exporter,
    stale_after: Duration,
    state: Mutex<State>,
    /// The number of fetches completed so far.
    completed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    fetching: bool,
    completed: u64,
    /// The last completed fetch's result; `None` when it failed.
    last: Option<Arc<EnginePart>>,
    /// Failed fetches by reason, for the counters.
    errors: std::collections::HashMap<&'static str, u64>,
    problems: std::collections::HashMap<&'static str, u64>,
    problems_logged: Option<Instant>,
}

impl Upstream {
    pub(super) fn new(
        url: String,
        relay: Relay,
        exporter: Exporter,
        stale_after: Duration,
    ) -> Self {
        Upstream {
            url,
            http: ureq::Agent::config_builder()
                .timeout_global(Some(FETCH_TIMEOUT))
                .build()
                .into(),
            relay,
            exporter,
            stale_after,
            state: Mutex::default(),
            completed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine's part of a scrape that may wait `budget` for it.
    pub(super) async fn engine_part(self: &Arc<Self>, budget: Duration) -> Option<Arc<EnginePart>> {
        let mut completed = self.completed.subscribe();
        let arrived_after = {
            let mut state = self.lock();
            if !state.fetching {
                state.fetching = true;
                let upstream = Arc::clone(self);
                tokio::task::spawn_blocking(move || upstream.fetch());
            }
            state.completed
        };
        let fresh = tokio::time::timeout(budget, completed.wait_for(|n| *n > arrived_after))
            .await
            .is_ok();
        let last = self.lock().last.clone()?;
        (fresh || last.fetched_at.elapsed() <= self.stale_after).then_some(last)
    }

    /// One fetch of the engine, on a blocking thread; records its outcome and wakes the
    /// scrapes waiting for it.
    fn fetch(&self) {
        /// Completes the fetch even if relaying panicked, so no scrape waits on it forever.
        struct Complete<'a>(&'a Upstream, Option<Arc<EnginePart>>);
        impl Drop for Complete<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.fetching = false;
                state.completed += 1;
                state.last = self.1.take();
                let n = state.completed;
                drop(state);
                self.0.completed.send_replace(n);
            }
        }
        let mut complete = Complete(self, None);
        let started = Instant::now();
        let result = self.get().and_then(|body| self.relay(&body));
        let e = &self.exporter;
        let _ = e.set_gauge(
            &ENGINE_SCRAPE_DURATION,
            &[],
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(text) => {
                let _ = e.set_gauge(&ENGINE_UP, &[], 1.0);
                complete.1 = Some(Arc::new(EnginePart {
                    text: Bytes::from(text),
                    fetched_at: Instant::now(),
                }));
            }
            Err((reason, err)) => {
                tracing::warn!(url = %self.url, reason, "engine scrape failed: {err}");
                let _ = e.set_gauge(&ENGINE_UP, &[], 0.0);
                let mut state = self.lock();
                let n = state.errors.entry(reason).or_default();
                *n += 1;
                let _ = e.set_counter_total(
                    &ENGINE_SCRAPE_ERRORS,
                    &[("reason", reason.into())],
                    *n as f64,
                );
            }
        }
    }

    /// The engine's answer, or why there is none (a reason of the scrape errors).
    fn get(&self) -> Result<Vec<u8>, (&'static str, String)> {
        let failed = |e: ureq::Error| {
            let reason = match &e {
                ureq::Error::StatusCode(_) => "http_status",
                ureq::Error::Timeout(_) => "timeout",
                ureq::Error::BodyExceedsLimit(_) => "too_large",
                _ => "unreachable",
            };
            (reason, e.to_string())
        };
        let mut response = self
            .http
            .get(&self.url)
            .header("Accept", "text/plain; version=0.0.4")
            .call()
            .map_err(failed)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(failed)
    }

    /// The passed-through part of `body`, counting (and now and then logging) what of it
    /// Prometheus would refuse; an error when it is not the engine's metrics.
    fn relay(&self, body: &[u8]) -> Result<String, (&'static str, String)> {
        let exposition = Exposition::parse(body, |name| self.relay.passes(name));
        engine_check::check(&exposition, &self.relay).map_err(|not| {
            (
                not.reason(),
                format!("the answer is not the engine's metrics ({})", not.reason()),
            )
        })?;
        if !exposition.problems.is_empty() {
            self.count_problems(&exposition);
        }
        Ok(self.relay.relay(&exposition))
    }

    fn count_problems(&self, exposition: &Exposition) {
        let mut state = self.lock();
        for (problem, n) in exposition.problem_counts() {
            if n == 0 {
                continue;
            }
            let total = state.problems.entry(problem.reason()).or_default();
            *total += n;
            let _ = self.exporter.set_counter_total(
                &ENGINE_EXPOSITION_PROBLEMS,
                &[("reason", problem.reason().into())],
                *total as f64,
            );
        }
        if state
            .problems_logged
            .is_none_or(|at| at.elapsed() >= PROBLEM_LOG_INTERVAL)
        {
            state.problems_logged = Some(Instant::now());
            let (problem, family) = &exposition.problems[0];
            tracing::warn!(
                url = %self.url,
                lines = exposition.problems.len(),
                "the engine's exposition has lines Prometheus would refuse; they are left out \
                 (first: {} in {family}; counted in {}_total, logged at most once a minute)",
                problem.reason(),
                ENGINE_EXPOSITION_PROBLEMS.name,
            );
        }
    }
}
