//! The recorder behind the `metrics` facade, and the [`Exporter`] that owns it.
//!
//! Vigil does not use metrics-exporter-prometheus's recorder: it cannot render OpenMetrics or
//! exemplars, renders `_total` and float values differently from prometheus_client (which
//! vLLM's dashboards and tools were written against), and has no `_created` series. This recorder
//! keeps series in metrics-util's sharded [`Registry`] with Vigil's own cells
//! ([`storage`]), and takes names, buckets and exemplar eligibility from the catalog.

pub(crate) mod storage;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};

use crate::buckets::BucketConfig;
use crate::catalog::{self, Kind, MetricDef};
use crate::gating::{self, Running, Visibility};
use crate::version::MinorVersion;
use storage::{CounterCell, GaugeCell, HistogramCell};

/// What one run of Vigil exposes: the settings that shape the exporter.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    /// Histogram bounds (defaults, `max_model_len`, `--custom-histogram-buckets`).
    pub buckets: BucketConfig,
    /// The versions the deprecation gate compares against (vLLM's line and Vigil's).
    pub running: Running,
    /// The validated `--show-hidden-metrics-for-version`.
    pub show_hidden_for: Option<MinorVersion>,
    /// `--enable-exemplars`: keep request ids on request-level histograms.
    pub enable_exemplars: bool,
    /// `false` with `--disable-log-stats`: no engine statistics at all, as in vLLM.
    pub engine_stats: bool,
    /// Emit `_created` series for counters and histograms, as prometheus_client does unless
    /// `PROMETHEUS_DISABLE_CREATED_SERIES` is set.
    pub created_series: bool,
}

impl ExporterConfig {
    /// Defaults for the running version: engine stats on, no hidden metrics, no exemplars.
    pub fn new(max_model_len: u64) -> Self {
        ExporterConfig {
            buckets: BucketConfig::new(max_model_len),
            running: Running::current(),
            show_hidden_for: None,
            enable_exemplars: false,
            engine_stats: true,
            created_series: true,
        }
    }
}

/// Creates cells for the registry, sized from the catalog.
#[derive(Debug)]
pub(crate) struct CatalogStorage {
    buckets: BucketConfig,
    enable_exemplars: bool,
    warned: Mutex<HashSet<String>>,
}

impl CatalogStorage {
    fn warn_uncatalogued(&self, name: &str, kind: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.insert(name.to_owned()) {
            tracing::warn!(
                metric = name,
                kind,
                "metric is not in the catalog as recorded (name, type or label names); it is never exposed"
            );
        }
    }

    fn entry(&self, key: &Key, kind: Kind) -> Option<&'static MetricDef> {
        let def = catalog::find(key.name()).filter(|d| d.kind == kind && d.mirror_of.is_none());
        match def {
            None => self.warn_uncatalogued(key.name(), kind.as_str()),
            Some(d) if !has_catalog_labels(key, d) => {
                self.warn_uncatalogued(key.name(), "labels other than the catalog's")
            }
            Some(_) => {}
        }
        def
    }
}

impl Storage<Key> for CatalogStorage {
    type Counter = Arc<CounterCell>;
    type Gauge = Arc<GaugeCell>;
    type Histogram = Arc<HistogramCell>;

    fn counter(&self, key: &Key) -> Self::Counter {
        self.entry(key, Kind::Counter);
        Arc::new(CounterCell::new())
    }

    fn gauge(&self, key: &Key) -> Self::Gauge {
        self.entry(key, Kind::Gauge);
        Arc::new(GaugeCell::new())
    }

    fn histogram(&self, key: &Key) -> Self::Histogram {
        let def = self.entry(key, Kind::Histogram);
        let bounds = def
            .and_then(|d| d.buckets)
            .map(|f| self.buckets.bounds(f))
            .unwrap_or_default();
        let exemplars = self.enable_exemplars && def.is_some_and(|d| d.exemplars);
        Arc::new(HistogramCell::new(Arc::from(bounds), exemplars))
    }
}

/// Work run before each rendering (values that are read, not recorded: uptime).
type RenderHook = Box<dyn Fn(&Exporter) + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) registry: Registry<Key, CatalogStorage>,
    render_hooks: Mutex<Vec<RenderHook>>,
    pub(crate) config: ExporterConfig,
    /// Catalog entries shown on `/metrics` for this run, in catalog order.
    pub(crate) visible: Vec<&'static MetricDef>,
}

/// The one exporter of a Vigil process: records through the `metrics` facade and renders
/// `/metrics`. Cloning is cheap; all clones share the same series.
#[derive(Clone)]
pub struct Exporter {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter with nothing recorded yet.
    pub fn new(config: ExporterConfig) -> Self {
        let visible = catalog::all()
            .filter(|d| config.engine_stats || !d.engine_stat)
            .filter(|d| {
                gating::visibility(d, config.running, config.show_hidden_for) == Visibility::Shown
            })
            .collect();
        let storage = CatalogStorage {
            buckets: config.buckets.clone(),
            enable_exemplars: config.enable_exemplars,
            warned: Mutex::new(HashSet::new()),
        };
        Exporter {
            inner: Arc::new(Inner {
                registry: Registry::new(storage),
                render_hooks: Mutex::new(Vec::new()),
                config,
                visible,
            }),
        }
    }

    /// Makes this exporter the process-wide recorder of the `metrics` facade.
    pub fn install(&self) -> Result<(), metrics::SetRecorderError<Exporter>> {
        metrics::set_global_recorder(self.clone())
    }

    /// Runs `hook` before every rendering of `/metrics`, for values best read at scrape time
    /// (an uptime gauge, as Dynamo updates `dynamo_component_uptime_seconds` at each scrape).
    pub fn on_render(&self, hook: impl Fn(&Exporter) + Send + Sync + 'static) {
        self.lock_hooks().push(Box::new(hook));
    }

    pub(crate) fn run_render_hooks(&self) {
        for hook in self.lock_hooks().iter() {
            hook(self);
        }
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, Vec<RenderHook>> {
        self.inner
            .render_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Its configuration.
    pub fn config(&self) -> &ExporterConfig {
        &self.inner.config
    }

    /// Whether `def` is rendered in this run (engine stats on, not hidden or removed).
    pub fn is_visible(&self, def: &MetricDef) -> bool {
        self.inner.visible.iter().any(|d| std::ptr::eq(*d, def))
    }

    /// Creates, with value 0, every series of every pre-created catalog entry for one model and
    /// its engines: one per engine and per value of each closed-set label, as vLLM does, so that
    /// dashboards show zeros instead of gaps. Entries with an `initial_one` value start at 1 for
    /// it (`vllm:engine_sleep_state{sleep_state="awake"}`).
    pub fn precreate(&self, model_name: &str, engines: &[&str]) {
        if !self.inner.config.engine_stats {
            return;
        }
        for def in catalog::all().filter(|d| d.precreate && d.mirror_of.is_none()) {
            for labels in catalog::precreated_label_sets(def, model_name, engines) {
                let one_of_value = labels.iter().find_map(|l| {
                    def.labels
                        .iter()
                        .any(
                            |d| matches!(d, catalog::Label::OneOf { name, .. } if *name == l.key()),
                        )
                        .then(|| l.value().to_owned())
                });
                let key = Key::from_parts(def.name, labels);
                match def.kind {
                    Kind::Counter => {
                        self.inner.registry.get_or_create_counter(&key, |_| ());
                    }
                    Kind::Gauge => {
                        let g = self.inner.registry.get_or_create_gauge(&key, Arc::clone);
                        if def.initial_one.is_some() && def.initial_one == one_of_value.as_deref() {
                            metrics::GaugeFn::set(&*g, 1.0);
                        }
                    }
                    Kind::Histogram => {
                        self.inner.registry.get_or_create_histogram(&key, |_| ());
                    }
                }
            }
        }
    }

    /// Sets an info-style gauge (value 1) such as `vllm:cache_config_info`. Every label the
    /// catalog lists must be given, and no other.
    pub fn set_info(
        &self,
        def: &'static MetricDef,
        labels: &[(&'static str, String)],
    ) -> Result<(), SetError> {
        self.set_gauge(def, labels, 1.0)
    }

    /// Sets a gauge series of `def` to `value`: for values read from outside the process's own
    /// code paths (hardware probes), which poll rather than hold `metrics` handles. Every label
    /// the catalog lists must be given, and no other.
    pub fn set_gauge(
        &self,
        def: &'static MetricDef,
        labels: &[(&'static str, String)],
        value: f64,
    ) -> Result<(), SetError> {
        let Some(key) = self.direct_key(def, Kind::Gauge, labels)? else {
            return Ok(());
        };
        let g = self.inner.registry.get_or_create_gauge(&key, Arc::clone);
        metrics::GaugeFn::set(&*g, value);
        Ok(())
    }

    /// Sets a counter series of `def` to a cumulative `total` kept elsewhere (the kernel, the
    /// GPU driver); fractional totals allowed.
    pub fn set_counter_total(
        &self,
        def: &'static MetricDef,
        labels: &[(&'static str, String)],
        total: f64,
    ) -> Result<(), SetError> {
        let Some(key) = self.direct_key(def, Kind::Counter, labels)? else {
            return Ok(());
        };
        self.inner
            .registry
            .get_or_create_counter(&key, |c| c.set_total(total));
        Ok(())
    }

    /// Replaces a histogram series of `def` with counts aggregated elsewhere: `counts` per
    /// bucket (not cumulative; one per bound of the entry's bucket family, plus `+Inf`).
    pub fn set_histogram_counts(
        &self,
        def: &'static MetricDef,
        labels: &[(&'static str, String)],
        counts: &[u64],
        sum: f64,
    ) -> Result<(), SetError> {
        let Some(key) = self.direct_key(def, Kind::Histogram, labels)? else {
            return Ok(());
        };
        let h = self
            .inner
            .registry
            .get_or_create_histogram(&key, Arc::clone);
        let buckets = h.snapshot().buckets.len();
        if counts.len() != buckets {
            return Err(SetError::BucketCount {
                name: def.name,
                buckets,
                counts: counts.len(),
            });
        }
        h.set_counts(counts, sum);
        Ok(())
    }

    /// Removes one series, so that it is absent from `/metrics` (a GPU field that stopped
    /// reading is dropped, not frozen at its last value). Returns whether it existed.
    pub fn remove_series(
        &self,
        def: &'static MetricDef,
        labels: &[(&'static str, String)],
    ) -> bool {
        let Ok(Some(key)) = self.direct_key(def, def.kind, labels) else {
            return false;
        };
        let registry = &self.inner.registry;
        match def.kind {
            Kind::Counter => registry.delete_counter(&key),
            Kind::Gauge => registry.delete_gauge(&key),
            Kind::Histogram => registry.delete_histogram(&key),
        }
    }

    /// The key of a series set directly, after checking its kind and label names against the
    /// catalog; `None` for an engine statistic under `--disable-log-stats`.
    fn direct_key(
        &self,
        def: &'static MetricDef,
        kind: Kind,
        labels: &[(&'static str, String)],
    ) -> Result<Option<Key>, SetError> {
        let mut expected: Vec<&str> = def.label_names().collect();
        let mut given: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        expected.sort_unstable();
        given.sort_unstable();
        if def.kind != kind || expected != given {
            return Err(SetError::NotInCatalog {
                name: def.name,
                kind: def.kind.as_str(),
                labels: format!("{expected:?}"),
                given_kind: kind.as_str(),
                given: format!("{given:?}"),
            });
        }
        if !self.inner.config.engine_stats && def.engine_stat {
            return Ok(None);
        }
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        Ok(Some(Key::from_parts(def.name, labels)))
    }
}

/// A series set directly that does not match its catalog entry: a bug in the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// A value for a series, or a label set, the catalog does not define.
    #[error("{name} is a {kind} with labels {labels}; got a {given_kind} with {given}")]
    NotInCatalog {
        /// The series.
        name: &'static str,
        /// Its kind in the catalog.
        kind: &'static str,
        /// The labels the catalog defines.
        labels: String,
        /// The kind it was given as.
        given_kind: &'static str,
        /// The labels it was given with.
        given: String,
    },
    /// Histogram counts that do not match the series' buckets.
    #[error("{name} has {buckets} buckets, got {counts} counts")]
    BucketCount {
        /// The series.
        name: &'static str,
        /// Its buckets.
        buckets: usize,
        /// The counts given.
        counts: usize,
    },
}

/// Whether `key` carries exactly the label names of `def` (in any order: `metrics` compares keys'
/// labels regardless of order, so one series never splits in two).
pub(crate) fn has_catalog_labels(key: &Key, def: &MetricDef) -> bool {
    let mut given: Vec<&str> = key.labels().map(|l| l.key()).collect();
    let mut expected: Vec<&str> = def.label_names().collect();
    given.sort_unstable();
    expected.sort_unstable();
    given == expected
}

impl Recorder for Exporter {
    // HELP text comes from the catalog, which is the source of truth; descriptions given through
    // the facade (see `catalog::describe_all`) are for other recorders.
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.inner.registry.get_or_create_counter(key, Arc::clone))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.inner.registry.get_or_create_gauge(key, Arc::clone))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.inner.registry.get_or_create_histogram(key, Arc::clone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::vllm;

    #[test]
    fn precreate_makes_every_enum_value_and_engine() {
        let exporter = Exporter::new(ExporterConfig::new(2048));
        exporter.precreate("m", &["0", "1"]);
        let mut n = 0;
        exporter.inner.registry.visit_counters(|key, _| {
            if key.name() == vllm::REQUEST_SUCCESS.name {
                n += 1;
            }
        });
        assert_eq!(n, vllm::FINISHED_REASONS.len() * 2);
        let mut awake = Vec::new();
        exporter.inner.registry.visit_gauges(|key, g| {
            if key.name() == vllm::ENGINE_SLEEP_STATE.name {
                let state = key
                    .labels()
                    .find(|l| l.key() == "sleep_state")
                    .unwrap()
                    .value()
                    .to_owned();
                awake.push((state, g.value()));
            }
        });
        awake.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(awake.len(), 6);
        for (state, v) in awake {
            assert_eq!(v, if state == "awake" { 1.0 } else { 0.0 }, "{state}");
        }
    }

    #[test]
    fn disable_log_stats_creates_nothing() {
        let mut config = ExporterConfig::new(2048);
        config.engine_stats = false;
        let exporter = Exporter::new(config);
        exporter.precreate("m", &["0"]);
        let mut n = 0;
        exporter.inner.registry.visit_counters(|_, _| n += 1);
        exporter.inner.registry.visit_histograms(|_, _| n += 1);
        assert_eq!(n, 0);
        assert!(!exporter.is_visible(&vllm::PROMPT_TOKENS));
    }

    #[test]
    fn set_info_checks_labels() {
        let exporter = Exporter::new(ExporterConfig::new(2048));
        assert!(exporter
            .set_info(&vllm::CACHE_CONFIG_INFO, &[("engine", "0".into())])
            .is_err());
        assert!(exporter.set_info(&vllm::NUM_REQUESTS_RUNNING, &[]).is_err());
    }

    #[test]
    fn facade_handles_share_cells_with_precreated_series() {
        let exporter = Exporter::new(ExporterConfig::new(2048));
        exporter.precreate("m", &["0"]);
        metrics::with_local_recorder(&exporter, || {
            metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => "m", "engine" => "0")
                .increment(7);
        });
        let mut seen = Vec::new();
        exporter.inner.registry.visit_counters(|key, c| {
            if key.name() == vllm::PROMPT_TOKENS.name {
                seen.push(c.value());
            }
        });
        assert_eq!(seen, vec![7.0]);
    }
}
