//! Rendering the registry as Prometheus text (0.0.4) or OpenMetrics 1.0.
//!
//! Both follow prometheus_client's single-process output, which is what vLLM serves: families in
//! catalog order, labels sorted by name (`le` included), counters as `<name>_total` with a
//! `<name>_created` series, histograms as cumulative `_bucket` lines then `_count` and `_sum`,
//! and numbers formatted by [`number::write_float`]. OpenMetrics differs in the family name of
//! counters (without `_total`), `_created` inside the family, quotes escaped in HELP, exemplars,
//! and the closing `# EOF`.
//!
//! The `dynamo_` families are written as Dynamo's own Rust exporter writes them (the `prometheus`
//! crate's `TextEncoder`), since dashboards for them were built on its output: no `_created`
//! series, numbers in Rust's shortest form (`16`, not `16.0`), `le` after the other labels,
//! `_sum` before `_count` ([`Dialect`]).

pub(crate) mod escape;
pub(crate) mod number;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::catalog::{self, Kind, MetricDef};
use crate::recorder::storage::{CounterCell, GaugeCell, HistogramCell, HistogramSnapshot};
use crate::recorder::Exporter;
use escape::{write_help, write_label_value};
use number::write_float;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`, the default.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`, chosen by the `Accept` header.
    OpenMetrics,
}

impl Format {
    /// Picks the format a scraper asked for: OpenMetrics when `Accept` lists
    /// `application/openmetrics-text` (Prometheus does by default), else Prometheus text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|a| {
            a.split(',').any(|part| {
                let mut params = part.split(';').map(str::trim);
                let media = params.next().unwrap_or("");
                let refused = params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The HTTP `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One series' labels, sorted by name.
type Labels = Vec<(String, String)>;

enum Cell {
    Counter(Arc<CounterCell>),
    Gauge(Arc<GaugeCell>),
    Histogram(Arc<HistogramCell>),
}

/// The registry's series grouped by catalog name; series whose label names differ from their
/// catalog entry's are left out.
fn collect(exporter: &Exporter) -> HashMap<&'static str, Vec<(Labels, Cell)>> {
    let mut groups: HashMap<&'static str, Vec<(Labels, Cell)>> = HashMap::new();
    let registry = &exporter.inner.registry;
    let mut add = |key: &metrics::Key, kind: Kind, cell: Cell| {
        let Some(def) = catalog::find(key.name()).filter(|d| d.kind == kind) else {
            return;
        };
        if !crate::recorder::has_catalog_labels(key, def) {
            return;
        }
        let mut labels: Labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort_unstable();
        groups.entry(def.name).or_default().push((labels, cell));
    };
    registry.visit_counters(|k, c| add(k, Kind::Counter, Cell::Counter(Arc::clone(c))));
    registry.visit_gauges(|k, g| add(k, Kind::Gauge, Cell::Gauge(Arc::clone(g))));
    registry.visit_histograms(|k, h| add(k, Kind::Histogram, Cell::Histogram(Arc::clone(h))));
    for series in groups.values_mut() {
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    groups
}

/// Whose exporter a family's text output copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Python's prometheus_client (vLLM, and Vigil's own series).
    PrometheusClient,
    /// Rust's `prometheus` crate (Dynamo's frontend and components).
    RustPrometheus,
}

impl Dialect {
    pub(crate) fn of(def: &MetricDef) -> Dialect {
        if def.name.starts_with("dynamo_") {
            Dialect::RustPrometheus
        } else {
            Dialect::PrometheusClient
        }
    }
}

/// Renders every visible family of `exporter` in `format`.
pub fn render(exporter: &Exporter, format: Format) -> String {
    exporter.run_render_hooks();
    let groups = collect(exporter);
    let created = exporter.inner.config.created_series;
    let mut out = String::with_capacity(64 * 1024);
    for def in &exporter.inner.visible {
        let Some(series) = groups.get(def.source_name()).filter(|s| !s.is_empty()) else {
            continue;
        };
        let dialect = Dialect::of(def);
        let created = created && dialect == Dialect::PrometheusClient;
        match (format, dialect) {
            (Format::Prometheus, Dialect::RustPrometheus) => {
                write_rust_text_family(&mut out, def, series)
            }
            (Format::Prometheus, _) => write_text_family(&mut out, def, series, created),
            (Format::OpenMetrics, _) => write_openmetrics_family(&mut out, def, series, created),
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn write_header(out: &mut String, name: &str, help: &str, kind: &str, format: Format) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    write_help(out, help, format == Format::OpenMetrics);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Writes `name{labels} value`, with `le` (if any) placed in sorted position among the labels.
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels,
    le: Option<f64>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut le = le;
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
        };
        for (k, v) in labels {
            if let Some(bound) = le.filter(|_| k.as_str() > "le") {
                sep(out);
                write_le(out, bound);
                le = None;
            }
            sep(out);
            out.push_str(k);
            out.push_str("=\"");
            write_label_value(out, v);
            out.push('"');
        }
        if let Some(bound) = le {
            sep(out);
            write_le(out, bound);
        }
        out.push('}');
    }
    out.push(' ');
    write_float(out, value);
}

fn write_le(out: &mut String, bound: f64) {
    out.push_str("le=\"");
    write_float(out, bound);
    out.push('"');
}

fn write_text_family(out: &mut String, def: &MetricDef, series: &[(Labels, Cell)], created: bool) {
    let help = def.help_text();
    match def.kind {
        Kind::Counter => {
            let total = format!("{}_total", def.name);
            write_header(out, &total, &help, "counter", Format::Prometheus);
            for (labels, cell) in series {
                if let Cell::Counter(c) = cell {
                    write_sample(out, def.name, "_total", labels, None, c.value());
                    out.push('\n');
                }
            }
            if created {
                let name = format!("{}_created", def.name);
                write_header(out, &name, &help, "gauge", Format::Prometheus);
                for (labels, cell) in series {
                    if let Cell::Counter(c) = cell {
                        write_sample(out, def.name, "_created", labels, None, c.created());
                        out.push('\n');
                    }
                }
            }
        }
        Kind::Gauge => {
            write_header(out, def.name, &help, "gauge", Format::Prometheus);
            for (labels, cell) in series {
                if let Cell::Gauge(g) = cell {
                    write_sample(out, def.name, "", labels, None, g.value());
                    out.push('\n');
                }
            }
        }
        Kind::Histogram => {
            write_header(out, def.name, &help, "histogram", Format::Prometheus);
            for (labels, cell) in series {
                if let Cell::Histogram(h) = cell {
                    write_histogram_samples(out, def.name, labels, &h.snapshot(), false);
                }
            }
            if created {
                let name = format!("{}_created", def.name);
                write_header(out, &name, &help, "gauge", Format::Prometheus);
                for (labels, cell) in series {
                    if let Cell::Histogram(h) = cell {
                        write_sample(out, def.name, "_created", labels, None, h.created());
                        out.push('\n');
                    }
                }
            }
        }
    }
}

/// A family as the `prometheus` crate's `TextEncoder` writes it.
fn write_rust_text_family(out: &mut String, def: &MetricDef, series: &[(Labels, Cell)]) {
    let help = def.help_text();
    let name = match def.kind {
        Kind::Counter => format!("{}_total", def.name),
        _ => def.name.to_owned(),
    };
    write_header(out, &name, &help, def.kind.as_str(), Format::Prometheus);
    let sample = |out: &mut String, suffix: &str, labels: &Labels, le: Option<&str>, v: f64| {
        out.push_str(&name);
        out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(le.map(|b| ("le", b)))
                .collect();
            out.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                write_label_value(out, v);
                out.push('"');
            }
            out.push('}');
        }
        let _ = writeln!(out, " {v}");
    };
    for (labels, cell) in series {
        match cell {
            Cell::Counter(c) => sample(out, "", labels, None, c.value()),
            Cell::Gauge(g) => sample(out, "", labels, None, g.value()),
            Cell::Histogram(h) => {
                let snap = h.snapshot();
                for (bound, cumulative) in &snap.buckets {
                    let le = if *bound == f64::INFINITY {
                        "+Inf".to_owned()
                    } else {
                        bound.to_string()
                    };
                    sample(out, "_bucket", labels, Some(&le), *cumulative as f64);
                }
                sample(out, "_sum", labels, None, snap.sum);
                sample(out, "_count", labels, None, snap.count as f64);
            }
        }
    }
}

fn write_openmetrics_family(
    out: &mut String,
    def: &MetricDef,
    series: &[(Labels, Cell)],
    created: bool,
) {
    let help = def.help_text();
    write_header(out, def.name, &help, def.kind.as_str(), Format::OpenMetrics);
    for (labels, cell) in series {
        match cell {
            Cell::Counter(c) => {
                write_sample(out, def.name, "_total", labels, None, c.value());
                out.push('\n');
                if created {
                    write_sample(out, def.name, "_created", labels, None, c.created());
                    out.push('\n');
                }
            }
            Cell::Gauge(g) => {
                write_sample(out, def.name, "", labels, None, g.value());
                out.push('\n');
            }
            Cell::Histogram(h) => {
                write_histogram_samples(out, def.name, labels, &h.snapshot(), true);
                if created {
                    write_sample(out, def.name, "_created", labels, None, h.created());
                    out.push('\n');
                }
            }
        }
    }
}

fn write_histogram_samples(
    out: &mut String,
    name: &str,
    labels: &Labels,
    snap: &HistogramSnapshot,
    exemplars: bool,
) {
    for (i, (bound, cumulative)) in snap.buckets.iter().enumerate() {
        write_sample(
            out,
            name,
            "_bucket",
            labels,
            Some(*bound),
            *cumulative as f64,
        );
        if let Some(e) = snap
            .exemplars
            .get(i)
            .and_then(Option::as_ref)
            .filter(|_| exemplars)
        {
            out.push_str(" # {");
            out.push_str(crate::exemplar::LABEL);
            out.push_str("=\"");
            write_label_value(out, &e.request_id);
            if let Some(trace_id) = &e.trace_id {
                out.push_str("\",");
                out.push_str(crate::exemplar::TRACE_LABEL);
                out.push_str("=\"");
                write_label_value(out, trace_id);
            }
            out.push_str("\"} ");
            write_float(out, e.value);
            let _ = write!(out, " {:.3}", e.timestamp);
        }
        out.push('\n');
    }
    write_sample(out, name, "_count", labels, None, snap.count as f64);
    out.push('\n');
    write_sample(out, name, "_sum", labels, None, snap.sum);
    out.push('\n');
}

#[cfg(test)]
mod tests;
