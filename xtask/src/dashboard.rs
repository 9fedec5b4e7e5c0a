//! `cargo xtask dashboard`: the Grafana dashboard, generated from the metric catalog.
//!
//! `cargo xtask dashboard`: the Grafana dashboard, generated from the metric catalog (every
//! series name comes from its catalog entry, so a renamed metric cannot leave a dead panel).
//!
//! Rows: "Why is it slow?" (TTFT, queue time, KV cache usage, preemptions, GPU utilization,
//! the engine thread's run-queue latency and structured outputs' mask time side by side), every panel of vLLM's own dashboard
//! (examples/online_serving/prometheus_grafana/grafana.json, same queries, with the current
//! names where vLLM's used deprecated ones), GPU, host scheduling by thread role, Dynamo's
//! frontend, and Vigil's own telemetry (what became of its request traces). Variables: the
//! Prometheus data source, `model_name` and `instance`.

use exporter::catalog::{dynamo, gpu, probe, sched, service, structured, vllm, MetricDef};
use serde_json::{json, Value};

/// Where the dashboard lives, relative to the workspace root.
pub(crate) const DASHBOARD: &str = "grafana/vigil.json";

const DS: &str = "${DS_PROMETHEUS}";
/// Selectors: engine series by model, hardware series by node.
const MODEL: &str = r#"model_name="$model_name""#;
const NODE: &str = r#"instance=~"$instance""#;

/// A gauge's series with selector `sel`.
fn series(def: &MetricDef, sel: &str) -> String {
    format!("{}{{{sel}}}", def.name)
}

fn total(def: &MetricDef, sel: &str) -> String {
    format!("{}_total{{{sel}}}", def.name)
}

fn rate_total(def: &MetricDef, sel: &str) -> String {
    format!("rate({}[$__rate_interval])", total(def, sel))
}

fn quantile(q: f64, def: &MetricDef, sel: &str, by: &str) -> String {
    format!(
        "histogram_quantile({q}, sum by({by}le) (rate({}_bucket{{{sel}}}[$__rate_interval])))",
        def.name
    )
}

fn mean(def: &MetricDef, sel: &str) -> String {
    format!(
        "rate({n}_sum{{{sel}}}[$__rate_interval])\n/\nrate({n}_count{{{sel}}}[$__rate_interval])",
        n = def.name
    )
}

/// vLLM's latency panel: P99, P95, P90, P50 and the mean.
fn percentiles(def: &MetricDef, sel: &str, mean_legend: &str) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = [0.99, 0.95, 0.9, 0.5]
        .iter()
        .map(|q| {
            (
                quantile(*q, def, sel, ""),
                format!("P{}", (q * 100.0).round()),
            )
        })
        .collect();
    t.push((mean(def, sel), mean_legend.to_owned()));
    t
}

#[derive(Clone, Copy)]
enum Viz {
    Series,
    Heatmap,
}

struct Panel {
    title: &'static str,
    description: String,
    unit: &'static str,
    viz: Viz,
    targets: Vec<(String, String)>,
}

fn panel(
    title: &'static str,
    description: impl Into<String>,
    unit: &'static str,
    targets: Vec<(String, String)>,
) -> Panel {
    Panel {
        title,
        description: description.into(),
        unit,
        viz: Viz::Series,
        targets,
    }
}

fn one(expr: String, legend: &str) -> Vec<(String, String)> {
    vec![(expr, legend.to_owned())]
}

fn heatmap(title: &'static str, def: &MetricDef, axis: &'static str) -> Panel {
    Panel {
        title,
        description: format!(
            "Heatmap of {}",
            def.help.trim_end_matches('.').to_lowercase()
        ),
        unit: axis,
        viz: Viz::Heatmap,
        targets: one(
            format!(
                "sum by(le) (increase({}_bucket{{{MODEL}}}[$__rate_interval]))",
                def.name
            ),
            "{{le}}",
        ),
    }
}

fn why_is_it_slow() -> Vec<Panel> {
    vec![
        panel(
            "TTFT p99",
            "Time to first token: what users wait before anything appears.",
            "s",
            one(
                quantile(0.99, &vllm::TIME_TO_FIRST_TOKEN_SECONDS, MODEL, ""),
                "TTFT p99",
            ),
        ),
        panel(
            "Queue time p99",
            "Time requests wait to be scheduled: high with TTFT means too little capacity.",
            "s",
            one(
                quantile(0.99, &vllm::REQUEST_QUEUE_TIME_SECONDS, MODEL, ""),
                "queue p99",
            ),
        ),
        panel(
            "KV cache usage",
            "A full KV cache stalls admission and forces preemptions.",
            "percentunit",
            one(
                series(&vllm::KV_CACHE_USAGE_PERC, MODEL),
                "KV usage",
            ),
        ),
        panel(
            "Preemptions/s",
            "Requests recomputed for want of KV blocks.",
            "none",
            one(rate_total(&vllm::NUM_PREEMPTIONS, MODEL), "preemptions"),
        ),
        panel(
            "GPU utilization",
            "Low while TTFT is high points away from the GPU: the host, the queue, the scheduler.",
            "percentunit",
            one(
                series(&gpu::UTILIZATION, NODE),
                "GPU {{gpu}} {{instance}}",
            ),
        ),
        panel(
            "Engine thread run-queue latency p99",
            "How long the engine loop waits for a CPU after waking: host CPU contention shows here first.",
            "s",
            one(
                quantile(
                    0.99,
                    &sched::RUNQUEUE_LATENCY,
                    &format!(r#"{NODE},role="engine""#),
                    "instance, ",
                ),
                "{{instance}}",
            ),
        ),
        panel(
            "Structured-output mask time p99 per step",
            "Time computing the token masks of constrained requests in one step, beside its forward pass: near the step time, it adds to every request's inter-token latency.",
            "s",
            one(
                quantile(0.99, &structured::MASK_SECONDS, MODEL, ""),
                "mask p99",
            ),
        ),
    ]
}

fn vllm_panels() -> Vec<Panel> {
    vec![
        panel(
            "E2E Request Latency",
            "End to end request latency measured in seconds.",
            "s",
            percentiles(&vllm::E2E_REQUEST_LATENCY_SECONDS, MODEL, "Average"),
        ),
        panel(
            "Token Throughput",
            "Number of tokens processed per second",
            "none",
            vec![
                (
                    rate_total(&vllm::PROMPT_TOKENS, MODEL),
                    "Prompt Tokens/Sec".into(),
                ),
                (
                    rate_total(&vllm::GENERATION_TOKENS, MODEL),
                    "Generation Tokens/Sec".into(),
                ),
            ],
        ),
        panel(
            "Time Per Output Token Latency",
            "Inter token latency in seconds.",
            "s",
            percentiles(&vllm::INTER_TOKEN_LATENCY_SECONDS, MODEL, "Mean"),
        ),
        panel(
            "Scheduler State",
            "Number of requests in RUNNING and WAITING state",
            "none",
            vec![
                (
                    series(&vllm::NUM_REQUESTS_RUNNING, MODEL),
                    "Num Running".into(),
                ),
                (
                    series(&vllm::NUM_REQUESTS_WAITING, MODEL),
                    "Num Waiting".into(),
                ),
            ],
        ),
        panel(
            "Time To First Token Latency",
            "P50, P90, P95, and P99 TTFT latency in seconds.",
            "s",
            percentiles(&vllm::TIME_TO_FIRST_TOKEN_SECONDS, MODEL, "Average"),
        ),
        panel(
            "Cache Utilization",
            "Percentage of used cache blocks by vLLM.",
            "percentunit",
            one(
                series(&vllm::KV_CACHE_USAGE_PERC, MODEL),
                "GPU Cache Usage",
            ),
        ),
        heatmap(
            "Request Prompt Length",
            &vllm::REQUEST_PROMPT_TOKENS,
            "Prompt Length",
        ),
        heatmap(
            "Request Generation Length",
            &vllm::REQUEST_GENERATION_TOKENS,
            "Generation Length",
        ),
        panel(
            "Finish Reason",
            "Number of finished requests by their finish reason: either an EOS token was generated or the max sequence length was reached.",
            "none",
            one(
                format!(
                    "sum by(finished_reason) (increase({}[$__rate_interval]))",
                    total(&vllm::REQUEST_SUCCESS, MODEL)
                ),
                "__auto",
            ),
        ),
        panel(
            "Queue Time",
            "Seconds per second that requests spent waiting to be scheduled.",
            "s",
            one(
                format!(
                    "rate({}_sum{{{MODEL}}}[$__rate_interval])",
                    vllm::REQUEST_QUEUE_TIME_SECONDS.name
                ),
                "__auto",
            ),
        ),
        panel(
            "Requests Prefill and Decode Time",
            "Seconds per second that requests spent in prefill and in decode.",
            "s",
            vec![
                (
                    format!(
                        "rate({}_sum{{{MODEL}}}[$__rate_interval])",
                        vllm::REQUEST_PREFILL_TIME_SECONDS.name
                    ),
                    "Prefill".into(),
                ),
                (
                    format!(
                        "rate({}_sum{{{MODEL}}}[$__rate_interval])",
                        vllm::REQUEST_DECODE_TIME_SECONDS.name
                    ),
                    "Decode".into(),
                ),
            ],
        ),
        panel(
            "Max Generation Token in Sequence Group",
            "Rate of the requests' largest max_tokens.",
            "none",
            one(
                format!(
                    "rate({}_sum{{{MODEL}}}[$__rate_interval])",
                    vllm::REQUEST_MAX_NUM_GENERATION_TOKENS.name
                ),
                "Tokens",
            ),
        ),
    ]
}

fn gpu_panels() -> Vec<Panel> {
    let per_gpu = "GPU {{gpu}} {{instance}}";
    let gauge = |def: &MetricDef| one(series(def, NODE), per_gpu);
    vec![
        panel(
            "GPU memory",
            "Memory used and total per GPU, and Vigil's own share.",
            "bytes",
            vec![
                (series(&gpu::MEMORY_USED, NODE), format!("used {per_gpu}")),
                (series(&gpu::MEMORY_TOTAL, NODE), format!("total {per_gpu}")),
                (
                    series(&gpu::PROCESS_MEMORY, NODE),
                    format!("vigil {per_gpu}"),
                ),
            ],
        ),
        panel(
            "GPU utilization",
            gpu::UTILIZATION.help,
            "percentunit",
            vec![
                (series(&gpu::UTILIZATION, NODE), format!("SM {per_gpu}")),
                (
                    series(&gpu::MEMORY_UTILIZATION, NODE),
                    format!("memory copy {per_gpu}"),
                ),
            ],
        ),
        panel(
            "GPU power",
            "Power draw against the limit.",
            "watt",
            vec![
                (series(&gpu::POWER, NODE), format!("draw {per_gpu}")),
                (series(&gpu::POWER_LIMIT, NODE), format!("limit {per_gpu}")),
            ],
        ),
        panel(
            "GPU temperature",
            gpu::TEMPERATURE.help,
            "celsius",
            gauge(&gpu::TEMPERATURE),
        ),
        panel(
            "GPU SM clock",
            gpu::SM_CLOCK.help,
            "hertz",
            gauge(&gpu::SM_CLOCK),
        ),
        panel(
            "GPU clock events (throttling)",
            gpu::CLOCK_EVENT.help,
            "none",
            one(
                format!("{}{{{NODE}}} == 1", gpu::CLOCK_EVENT.name),
                "{{reason}} GPU {{gpu}} {{instance}}",
            ),
        ),
        panel(
            "GPU errors",
            "XID errors, uncorrected ECC errors and PCIe replays in the interval.",
            "none",
            vec![
                (
                    format!(
                        "increase({}[$__rate_interval])",
                        total(&gpu::XID_ERRORS, NODE)
                    ),
                    "XID {{xid}} GPU {{gpu}} {{instance}}".into(),
                ),
                (
                    format!(
                        "increase({}[$__rate_interval])",
                        total(&gpu::ECC_ERRORS, NODE)
                    ),
                    "ECC {{error_type}} GPU {{gpu}} {{instance}}".into(),
                ),
                (
                    format!(
                        "increase({}[$__rate_interval])",
                        total(&gpu::PCIE_REPLAYS, NODE)
                    ),
                    "PCIe replays GPU {{gpu}} {{instance}}".into(),
                ),
            ],
        ),
        panel(
            "GPUs answering and probes running",
            "1 per GPU that answers NVML; 1 per probe that runs (reason says why one is off).",
            "none",
            vec![
                (series(&gpu::GPU_UP, NODE), format!("GPU up {per_gpu}")),
                (
                    series(&probe::PROBE_UP, NODE),
                    "{{probe}} {{reason}} {{instance}}".into(),
                ),
            ],
        ),
    ]
}

fn sched_panels() -> Vec<Panel> {
    let by_role = "{{role}} {{instance}}";
    vec![
        panel(
            "Run-queue latency p99 by thread role",
            sched::RUNQUEUE_LATENCY.help,
            "s",
            one(
                quantile(0.99, &sched::RUNQUEUE_LATENCY, NODE, "instance, role, "),
                by_role,
            ),
        ),
        panel(
            "Run-queue latency p50 by thread role",
            sched::RUNQUEUE_LATENCY.help,
            "s",
            one(
                quantile(0.5, &sched::RUNQUEUE_LATENCY, NODE, "instance, role, "),
                by_role,
            ),
        ),
        panel(
            "Off-CPU time by thread role",
            "Seconds per second Vigil's threads spent off a CPU (sleeping or waiting).",
            "s",
            one(rate_total(&sched::OFF_CPU, NODE), by_role),
        ),
        panel(
            "Context switches by thread role",
            "Involuntary (preempted) and voluntary switches per second.",
            "none",
            vec![
                (
                    rate_total(&sched::INVOLUNTARY_SWITCHES, NODE),
                    format!("involuntary {by_role}"),
                ),
                (
                    rate_total(&sched::VOLUNTARY_SWITCHES, NODE),
                    format!("voluntary {by_role}"),
                ),
            ],
        ),
    ]
}

fn dynamo_panels() -> Vec<Panel> {
    vec![
        panel(
            "Frontend requests/s by status",
            dynamo::FRONTEND_REQUESTS.help,
            "reqps",
            one(
                format!(
                    "sum by(model, status, error_type) ({})",
                    rate_total(&dynamo::FRONTEND_REQUESTS, NODE)
                ),
                "{{model}} {{status}} {{error_type}}",
            ),
        ),
        panel(
            "Frontend active requests",
            dynamo::FRONTEND_ACTIVE_REQUESTS.help,
            "none",
            one(
                series(&dynamo::FRONTEND_ACTIVE_REQUESTS, NODE),
                "{{model}} {{instance}}",
            ),
        ),
        panel(
            "Frontend TTFT and ITL p99",
            "Dynamo's view of time to first token and inter-token latency.",
            "s",
            vec![
                (
                    quantile(0.99, &dynamo::FRONTEND_TIME_TO_FIRST_TOKEN, NODE, "model, "),
                    "TTFT {{model}}".into(),
                ),
                (
                    quantile(0.99, &dynamo::FRONTEND_INTER_TOKEN_LATENCY, NODE, "model, "),
                    "ITL {{model}}".into(),
                ),
            ],
        ),
        panel(
            "Frontend request duration p99",
            dynamo::FRONTEND_REQUEST_DURATION.help,
            "s",
            one(
                quantile(0.99, &dynamo::FRONTEND_REQUEST_DURATION, NODE, "model, "),
                "{{model}}",
            ),
        ),
        panel(
            "Frontend sequence lengths p50",
            "Input and output sequence lengths in tokens.",
            "none",
            vec![
                (
                    quantile(
                        0.5,
                        &dynamo::FRONTEND_INPUT_SEQUENCE_TOKENS,
                        NODE,
                        "model, ",
                    ),
                    "input {{model}}".into(),
                ),
                (
                    quantile(
                        0.5,
                        &dynamo::FRONTEND_OUTPUT_SEQUENCE_TOKENS,
                        NODE,
                        "model, ",
                    ),
                    "output {{model}}".into(),
                ),
            ],
        ),
        panel(
            "Frontend output tokens/s",
            dynamo::FRONTEND_OUTPUT_TOKENS.help,
            "none",
            one(
                format!(
                    "sum by(model) ({})",
                    rate_total(&dynamo::FRONTEND_OUTPUT_TOKENS, NODE)
                ),
                "{{model}}",
            ),
        ),
    ]
}

fn telemetry_panels() -> Vec<Panel> {
    vec![panel(
        "Trace spans/s by outcome",
        format!(
            "{} Failed or dropped spans are traces lost: see the VigilTraceSpansLost alert and \
             Vigil's log.",
            service::TRACE_SPANS.help
        ),
        "ops",
        one(
            format!(
                "sum by(outcome, instance) ({})",
                rate_total(&service::TRACE_SPANS, NODE)
            ),
            "{{outcome}} {{instance}}",
        ),
    )]
}

/// The dashboard's rows, in order.
fn rows() -> Vec<(&'static str, usize, Vec<Panel>)> {
    // (title, panels per line, panels)
    vec![
        ("Why is it slow?", 3, why_is_it_slow()),
        ("vLLM", 2, vllm_panels()),
        ("GPU (NVML)", 2, gpu_panels()),
        ("Host scheduling (eBPF)", 2, sched_panels()),
        ("Dynamo frontend", 2, dynamo_panels()),
        ("Telemetry", 2, telemetry_panels()),
    ]
}

fn panel_json(p: &Panel, id: usize, x: usize, y: usize, w: usize) -> Value {
    let ds = json!({"type": "prometheus", "uid": DS});
    let targets: Vec<Value> = p
        .targets
        .iter()
        .enumerate()
        .map(|(i, (expr, legend))| {
            let mut t = json!({
                "datasource": ds, "editorMode": "code", "expr": expr,
                "legendFormat": legend, "range": true, "instant": false,
                "refId": ((b'A' + i as u8) as char).to_string(),
            });
            if let Viz::Heatmap = p.viz {
                t["format"] = json!("heatmap");
            }
            t
        })
        .collect();
    let grid = json!({"h": 8, "w": w, "x": x, "y": y});
    match p.viz {
        Viz::Series => json!({
            "type": "timeseries", "title": p.title, "description": p.description,
            "id": id, "datasource": ds, "gridPos": grid, "targets": targets,
            "fieldConfig": {"defaults": {"unit": p.unit, "color": {"mode": "palette-classic"}}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
                        "tooltip": {"mode": "multi", "sort": "none"}},
        }),
        Viz::Heatmap => json!({
            "type": "heatmap", "title": p.title, "description": p.description,
            "id": id, "datasource": ds, "gridPos": grid, "targets": targets,
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {
                "calculate": false, "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Spectral", "scale": "exponential", "exponent": 0.5, "steps": 64},
                "yAxis": {"axisLabel": p.unit, "axisPlacement": "left", "unit": "none"},
                "rowsFrame": {"layout": "auto", "value": "Request count"},
                "tooltip": {"mode": "single", "yHistogram": true},
                "legend": {"show": true}
            },
        }),
    }
}

pub(crate) fn render() -> String {
    let mut panels = Vec::new();
    let mut id = 1;
    let mut y = 0;
    for (title, per_line, row) in rows() {
        panels.push(json!({
            "type": "row", "title": title, "collapsed": false, "id": id,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": [],
        }));
        id += 1;
        y += 1;
        let w = 24 / per_line;
        for (i, p) in row.iter().enumerate() {
            let (line, col) = (i / per_line, i % per_line);
            panels.push(panel_json(p, id, col * w, y + line * 8, w));
            id += 1;
        }
        y += row.len().div_ceil(per_line) * 8;
    }
    let dashboard = json!({
        "title": "Vigil",
        "uid": "vigil-serving",
        "description": "Vigil: vLLM's serving metrics, GPU telemetry (NVML), host scheduling latency (eBPF) and Dynamo's frontend. Generated by `cargo xtask dashboard` from the metric catalog.",
        "editable": true,
        "schemaVersion": 39,
        "tags": ["vigil", "vllm", "llm"],
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "30s",
        "graphTooltip": 1,
        "panels": panels,
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "label": "datasource", "type": "datasource",
             "query": "prometheus", "hide": 0, "refresh": 1},
            {"name": "model_name", "label": "model_name", "type": "query",
             "datasource": {"type": "prometheus", "uid": DS},
             "definition": "label_values({__name__=~\"vllm:.*\"},model_name)",
             "query": {"query": "label_values({__name__=~\"vllm:.*\"},model_name)", "refId": "StandardVariableQuery"},
             "refresh": 1, "hide": 0, "includeAll": false, "multi": false},
            {"name": "instance", "label": "instance", "type": "query",
             "datasource": {"type": "prometheus", "uid": DS},
             "definition": "label_values(up, instance)",
             "query": {"query": "label_values(up, instance)", "refId": "StandardVariableQuery"},
             "refresh": 1, "hide": 0, "includeAll": true, "allValue": ".*", "multi": true,
             "current": {"text": "All", "value": "$__all"}},
        ]},
    });
    let mut text = serde_json::to_string_pretty(&dashboard).expect("JSON");
    text.push('\n');
    text
}
