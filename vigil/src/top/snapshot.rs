//! The dashboard's numbers for one window, per engine, GPU and thread role.
//!
//! The dashboard's numbers for one window: two scrapes of each endpoint turned into rows per
//! engine, per GPU and per thread role, with the catalog's series names.

use exporter::catalog::{device, dynamo, gpu, sched, service, structured, vllm};

use super::scrape::{label, Labels, Scrape};
use super::window::{histogram_quantile, increase, rate};

/// One engine (`model_name`, `engine`) of one endpoint over the window.
#[derive(Debug, Clone)]
pub(super) struct EngineRow {
    pub url: String,
    pub model_name: String,
    pub engine: String,
    pub running: f64,
    pub waiting: f64,
    /// `(reason, requests)` from the waiting-by-reason gauge.
    pub waiting_by_reason: Vec<(String, f64)>,
    pub kv_cache_usage: f64,
    /// Hits over queries in the window; NaN without queries.
    pub prefix_cache_hit_rate: f64,
    pub preemptions_per_s: f64,
    pub prompt_tokens_per_s: f64,
    pub generation_tokens_per_s: f64,
    /// `(p50, p99)` in seconds of the requests finished in the window; NaN without any.
    pub ttft: (f64, f64),
    pub itl: (f64, f64),
    pub e2e: (f64, f64),
    pub queue: (f64, f64),
}

/// One model behind a Dynamo frontend (`model`) over the window.
#[derive(Debug, Clone)]
pub(super) struct FrontendRow {
    pub url: String,
    pub model: String,
    pub inflight: f64,
    pub queued: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft: (f64, f64),
    pub itl: (f64, f64),
    pub duration: (f64, f64),
}

#[derive(Debug, Clone)]
pub(super) struct GpuRow {
    pub url: String,
    pub gpu: String,
    pub model: String,
    pub utilization: f64,
    pub memory_used: f64,
    pub memory_total: f64,
    pub power_watts: f64,
    pub temperature: f64,
    /// Reasons holding the clocks down now (idle excepted).
    pub throttled_by: Vec<String>,
    /// XID errors and ECC errors counted in the window.
    pub xid_errors: f64,
    pub ecc_errors: f64,
    /// Whether the probe's last poll read the GPU (`vigil_gpu_up`): a GPU that fell off the bus
    /// reads nothing, and its other series are gone.
    pub up: bool,
    /// The XIDs reported since the probe started after which the GPU needs a reset (in code
    /// order), whether in the window or before it: the GPU stays broken until then.
    pub fatal_xids: Vec<u64>,
}

/// XIDs after which a GPU needs a reset (NVIDIA's XID catalog): double-bit ECC (48),
/// micro-controller halts (61, 62), a failed row remap (64), NVLink (74), fallen off the bus
/// (79), uncontained ECC (95), GSP errors (119, 120), unrecovered ECC (140).
pub(super) const FATAL_XIDS: &[u64] = &[48, 61, 62, 64, 74, 79, 95, 119, 120, 140];

#[derive(Debug, Clone)]
pub(super) struct HostRow {
    pub url: String,
    pub role: String,
    pub runqueue_p99: f64,
    pub involuntary_switches_per_s: f64,
}

/// Device time in the window: the share of it the GPU spent in steps.
#[derive(Debug, Clone)]
pub(super) struct DeviceRow {
    pub url: String,
    pub busy_fraction: f64,
}

/// Requests' CPU work before the engine (a Vigil's `vigil_cpu_pool_jobs`): requests here are in
/// no `vllm:` queue yet.
#[derive(Debug, Clone)]
pub(super) struct PoolRow {
    pub url: String,
    /// `request` (parsing, templates, tokenization) or `grammar` (constraint compiles).
    pub pool: String,
    pub waiting: f64,
    pub running: f64,
    /// Seconds of constraint compiling per second of the window (`grammar` only; NaN for the
    /// request pool, which records no time).
    pub busy: f64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    pub seconds: f64,
    pub engines: Vec<EngineRow>,
    pub frontends: Vec<FrontendRow>,
    pub gpus: Vec<GpuRow>,
    pub host: Vec<HostRow>,
    pub device: Vec<DeviceRow>,
    pub pools: Vec<PoolRow>,
    /// What an endpoint does not expose, by section: `(url, what)`.
    pub missing: Vec<(String, String)>,
}

/// The median and 99th percentile of histogram `name`'s observations in the window.
fn p50_p99(name: &str, id: &[(&str, &str)], before: &Scrape, after: &Scrape) -> (f64, f64) {
    let (b, a) = (before.buckets(name, id), after.buckets(name, id));
    (
        histogram_quantile(0.5, &b, &a),
        histogram_quantile(0.99, &b, &a),
    )
}

/// The increase of counter `name` in the window, summed over its series that match `id`: each
/// series' own increase, as PromQL's `sum(increase(...))` counts it (a series that went down
/// was reset and counts from zero, so 5 then 2 is 2; one new in the window counts its whole
/// value). `None` when no series matches.
fn increase_of(name: &str, id: &[(&str, &str)], before: &Scrape, after: &Scrape) -> Option<f64> {
    let now = after.matching(name, id);
    if now.is_empty() {
        return None;
    }
    let then = before.matching(name, id);
    Some(
        now.iter()
            .map(|(labels, a)| {
                let b = then
                    .iter()
                    .find(|(l, _)| l == labels)
                    .map_or(0.0, |(_, b)| *b);
                increase(b, *a)
            })
            .sum(),
    )
}

fn counter(name: &str) -> String {
    format!("{name}_total")
}

impl Snapshot {
    /// Adds the rows of one endpoint, read at `before` and `after`.
    pub(super) fn add(&mut self, url: &str, before: &Scrape, after: &Scrape) {
        let dt = (after.at - before.at).max(1e-3);
        self.seconds = dt;
        self.add_engines(url, before, after, dt);
        self.add_frontends(url, before, after, dt);
        self.add_gpus(url, before, after);
        self.add_host(url, before, after, dt);
        self.add_device(url, before, after);
        self.add_pools(url, before, after, dt);
    }

    /// A Vigil's CPU pools (other engines have none, and nothing is missing then).
    fn add_pools(&mut self, url: &str, before: &Scrape, after: &Scrape, dt: f64) {
        let jobs = service::CPU_POOL_JOBS.name;
        let compiling = format!("{}_sum", structured::COMPILE_SECONDS.name);
        for pool in service::CPU_POOLS {
            let state = |state: &str| after.value(jobs, &[("pool", pool), ("state", state)]);
            if let (Some(waiting), Some(running)) = (state("waiting"), state("running")) {
                let busy = match *pool {
                    "grammar" => {
                        increase_of(&compiling, &[], before, after).map_or(f64::NAN, |s| s / dt)
                    }
                    _ => f64::NAN,
                };
                self.pools.push(PoolRow {
                    url: url.into(),
                    pool: (*pool).to_owned(),
                    waiting,
                    running,
                    busy,
                });
            }
        }
    }

    fn add_engines(&mut self, url: &str, before: &Scrape, after: &Scrape, dt: f64) {
        let running = vllm::NUM_REQUESTS_RUNNING.name;
        if !after.has(running) {
            self.missing.push((
                url.into(),
                format!("engine: no {running} (not a vLLM-compatible engine)"),
            ));
            return;
        }
        for (labels, value) in after.all(running) {
            let model = label(labels, "model_name").unwrap_or("").to_owned();
            let engine = label(labels, "engine").unwrap_or("").to_owned();
            let id = [("model_name", model.as_str()), ("engine", engine.as_str())];
            let gauge = |name: &str| after.value(name, &id).unwrap_or(f64::NAN);
            let per_s = |name: &str| {
                let name = counter(name);
                match (before.value(&name, &id), after.value(&name, &id)) {
                    (Some(b), Some(a)) => rate(b, a, dt),
                    _ => f64::NAN,
                }
            };
            let quantiles = |name: &str| p50_p99(name, &id, before, after);
            let waiting_by_reason = after
                .matching(vllm::NUM_REQUESTS_WAITING_BY_REASON.name, &id)
                .into_iter()
                .filter_map(|(l, v)| Some((label(l, "reason")?.to_owned(), v)))
                .collect();
            self.engines.push(EngineRow {
                url: url.into(),
                running: *value,
                waiting: gauge(vllm::NUM_REQUESTS_WAITING.name),
                waiting_by_reason,
                kv_cache_usage: gauge(vllm::KV_CACHE_USAGE_PERC.name),
                prefix_cache_hit_rate: per_s(vllm::PREFIX_CACHE_HITS.name)
                    / per_s(vllm::PREFIX_CACHE_QUERIES.name),
                preemptions_per_s: per_s(vllm::NUM_PREEMPTIONS.name),
                prompt_tokens_per_s: per_s(vllm::PROMPT_TOKENS.name),
                generation_tokens_per_s: per_s(vllm::GENERATION_TOKENS.name),
                ttft: quantiles(vllm::TIME_TO_FIRST_TOKEN_SECONDS.name),
                itl: quantiles(vllm::INTER_TOKEN_LATENCY_SECONDS.name),
                e2e: quantiles(vllm::E2E_REQUEST_LATENCY_SECONDS.name),
                queue: quantiles(vllm::REQUEST_QUEUE_TIME_SECONDS.name),
                model_name: model,
                engine,
            });
        }
    }

    /// Dynamo frontends' models (a Vigil shows these beside its engines too).
    fn add_frontends(&mut self, url: &str, before: &Scrape, after: &Scrape, dt: f64) {
        // Dynamo deprecated the in-flight gauge for the active one; either is read.
        let active = dynamo::FRONTEND_ACTIVE_REQUESTS.name;
        let inflight = if after.has(active) {
            active
        } else {
            dynamo::FRONTEND_INFLIGHT_REQUESTS.name
        };
        for (labels, value) in after.all(inflight) {
            let model = label(labels, "model").unwrap_or("").to_owned();
            let id = [("model", model.as_str())];
            // Summed over the other labels (endpoint, request type, status).
            let per_s = |name: &str| {
                let name = counter(name);
                if before.matching(&name, &id).is_empty() {
                    return f64::NAN;
                }
                increase_of(&name, &id, before, after).map_or(f64::NAN, |n| n / dt)
            };
            let quantiles = |name: &str| p50_p99(name, &id, before, after);
            self.frontends.push(FrontendRow {
                url: url.into(),
                inflight: *value,
                queued: after
                    .value(dynamo::FRONTEND_QUEUED_REQUESTS.name, &id)
                    .unwrap_or(f64::NAN),
                requests_per_s: per_s(dynamo::FRONTEND_REQUESTS.name),
                output_tokens_per_s: per_s(dynamo::FRONTEND_OUTPUT_TOKENS.name),
                ttft: quantiles(dynamo::FRONTEND_TIME_TO_FIRST_TOKEN.name),
                itl: quantiles(dynamo::FRONTEND_INTER_TOKEN_LATENCY.name),
                duration: quantiles(dynamo::FRONTEND_REQUEST_DURATION.name),
                model,
            });
        }
    }

    fn add_gpus(&mut self, url: &str, before: &Scrape, after: &Scrape) {
        let util = gpu::UTILIZATION.name;
        let up = gpu::GPU_UP.name;
        if !after.has(util) && !after.has(up) {
            self.missing.push((
                url.into(),
                format!("GPU: no {util} (NVML probe off or no GPU)"),
            ));
            return;
        }
        // Every GPU the probe knows (`vigil_gpu_up`), a lost one included, and any other
        // reporting utilization; in the order of their ids.
        let mut gpus: Vec<&Labels> = after.all(up).iter().map(|(l, _)| l).collect();
        for (labels, _) in after.all(util) {
            if !gpus.iter().any(|l| label(l, "gpu") == label(labels, "gpu")) {
                gpus.push(labels);
            }
        }
        let gpu_order = |l: &&Labels| {
            let id = label(l, "gpu").unwrap_or("");
            (id.parse::<u64>().unwrap_or(u64::MAX), id.to_owned())
        };
        gpus.sort_by_key(gpu_order);
        for labels in gpus {
            let id = label(labels, "gpu").unwrap_or("").to_owned();
            let one = [("gpu", id.as_str())];
            let gauge = |name: &str| after.value(name, &one).unwrap_or(f64::NAN);
            let counted =
                |name: &str| increase_of(&counter(name), &one, before, after).unwrap_or(0.0);
            let throttled_by = after
                .matching(gpu::CLOCK_EVENT.name, &one)
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .filter_map(|(l, _)| label(l, "reason"))
                .filter(|r| *r != "gpu_idle")
                .map(str::to_owned)
                .collect();
            let mut fatal_xids: Vec<u64> = after
                .matching(&counter(gpu::XID_ERRORS.name), &one)
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .filter_map(|(l, _)| label(l, "xid")?.parse().ok())
                .filter(|xid| FATAL_XIDS.contains(xid))
                .collect();
            fatal_xids.sort_unstable();
            fatal_xids.dedup();
            self.gpus.push(GpuRow {
                url: url.into(),
                model: label(labels, "gpu_model").unwrap_or("").to_owned(),
                utilization: gauge(util),
                up: after.value(up, &one).is_none_or(|v| v > 0.0),
                fatal_xids,
                memory_used: gauge(gpu::MEMORY_USED.name),
                memory_total: gauge(gpu::MEMORY_TOTAL.name),
                power_watts: gauge(gpu::POWER.name),
                temperature: gauge(gpu::TEMPERATURE.name),
                throttled_by,
                xid_errors: counted(gpu::XID_ERRORS.name),
                ecc_errors: counted(gpu::ECC_ERRORS.name),
                gpu: id,
            });
        }
    }

    fn add_host(&mut self, url: &str, before: &Scrape, after: &Scrape, dt: f64) {
        let latency = sched::RUNQUEUE_LATENCY.name;
        if after.buckets(latency, &[]).is_empty() {
            self.missing
                .push((url.into(), format!("host: no {latency} (eBPF probe off)")));
            return;
        }
        for role in sched::ROLES {
            let id = [("role", *role)];
            let (b, a) = (before.buckets(latency, &id), after.buckets(latency, &id));
            if a.is_empty() {
                continue;
            }
            let switches = counter(sched::INVOLUNTARY_SWITCHES.name);
            self.host.push(HostRow {
                url: url.into(),
                role: (*role).to_owned(),
                runqueue_p99: histogram_quantile(0.99, &b, &a),
                involuntary_switches_per_s: match (
                    before.value(&switches, &id),
                    after.value(&switches, &id),
                ) {
                    (Some(b), Some(a)) => rate(b, a, dt),
                    _ => f64::NAN,
                },
            });
        }
    }

    fn add_device(&mut self, url: &str, before: &Scrape, after: &Scrape) {
        let total = |s: &Scrape, name: &str| -> Option<f64> {
            let all = s.all(&format!("{name}_sum"));
            (!all.is_empty()).then(|| all.iter().map(|(_, v)| v).sum())
        };
        let (busy, gap) = (device::STEP_BUSY.name, device::STEP_GAP.name);
        if let (Some(b0), Some(b1), Some(g0), Some(g1)) = (
            total(before, busy),
            total(after, busy),
            total(before, gap),
            total(after, gap),
        ) {
            let (busy, gap) = (b1 - b0, g1 - g0);
            if busy + gap > 0.0 {
                self.device.push(DeviceRow {
                    url: url.into(),
                    busy_fraction: busy / (busy + gap),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(before: &str, after: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.add(
            "u",
            &Scrape::from_text(0.0, before.to_owned()),
            &Scrape::from_text(1.0, after.to_owned()),
        );
        s
    }

    /// XID and ECC counters reset between two scrapes (the driver reloaded, the exporter
    /// restarted): 5 then 2 is 2 errors in the window, as PromQL's `increase` counts it, and
    /// each series (XID code) counts on its own.
    #[test]
    fn a_counter_reset_between_scrapes_still_counts() {
        let gpu = "vigil_gpu_utilization_ratio{gpu=\"0\"} 0.5\n";
        let before = format!(
            "{gpu}vigil_gpu_xid_errors_total{{gpu=\"0\",xid=\"79\"}} 5\n\
             vigil_gpu_xid_errors_total{{gpu=\"0\",xid=\"48\"}} 1\n"
        );
        let after = format!(
            "{gpu}vigil_gpu_xid_errors_total{{gpu=\"0\",xid=\"79\"}} 2\n\
             vigil_gpu_xid_errors_total{{gpu=\"0\",xid=\"48\"}} 4\n"
        );
        let s = window(&before, &after);
        assert_eq!(s.gpus[0].xid_errors, 2.0 + 3.0);
    }

    /// Vigil's CPU pools: the requests waiting and running on each, and for the grammar pool
    /// the seconds of compiling per second (constraints of every kind and outcome).
    #[test]
    fn the_pools_show_their_queue_and_the_compile_time() {
        let scrape = |compiled: f64| {
            format!(
                "vigil_cpu_pool_jobs{{pool=\"request\",state=\"waiting\"}} 0\n\
                 vigil_cpu_pool_jobs{{pool=\"request\",state=\"running\"}} 1\n\
                 vigil_cpu_pool_jobs{{pool=\"grammar\",state=\"waiting\"}} 7\n\
                 vigil_cpu_pool_jobs{{pool=\"grammar\",state=\"running\"}} 1\n\
                 vigil_structured_output_compile_seconds_sum{{kind=\"json\",outcome=\"compiled\"}} {compiled}\n\
                 vigil_structured_output_compile_seconds_sum{{kind=\"regex\",outcome=\"refused\"}} 0.25\n"
            )
        };
        let s = window(&scrape(1.0), &scrape(1.5));
        let grammar = s.pools.iter().find(|p| p.pool == "grammar").unwrap();
        assert_eq!(
            (grammar.waiting, grammar.running, grammar.busy),
            (7.0, 1.0, 0.5)
        );
        let request = s.pools.iter().find(|p| p.pool == "request").unwrap();
        assert_eq!((request.waiting, request.running), (0.0, 1.0));
        assert!(request.busy.is_nan());
    }

    /// Thousands of engines on one endpoint: each row reads its own engine's series (the
    /// scrape is indexed once per family, not searched once per engine).
    #[test]
    fn thousands_of_engines_each_get_their_own_row() {
        let mut body = String::new();
        for e in 0..3400 {
            body.push_str(&format!(
                "vllm:num_requests_running{{model_name=\"m\",engine=\"{e}\"}} {e}\n\
                 vllm:num_requests_waiting{{model_name=\"m\",engine=\"{e}\"}} {}\n\
                 vllm:kv_cache_usage_perc{{model_name=\"m\",engine=\"{e}\"}} 0.5\n",
                e * 2
            ));
        }
        let s = window(&body, &body);
        assert_eq!(s.engines.len(), 3400);
        let row = s.engines.iter().find(|r| r.engine == "1234").unwrap();
        assert_eq!((row.running, row.waiting), (1234.0, 2468.0));
    }
}
