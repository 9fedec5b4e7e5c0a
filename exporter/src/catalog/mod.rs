//! The metric catalog: one table describing every series Vigil can emit.
//!
//! Each entry is a `static` [`MetricDef`]; code that records a metric refers to the entry (for
//! example `catalog::vllm::PROMPT_TOKENS.name`), so every metric name is written exactly once in
//! the code base. The same table drives registration and pre-creation of series, histogram
//! buckets, deprecation gating, rendering, `docs/metrics.md` and the Grafana dashboard.
//!
//! Versions: the `vllm:` entries are vLLM `crate::gating::VLLM_CATALOG`'s, and their
//! [`Deprecation::since`] is a vLLM version; every other entry's is a Vigil version. The gate
//! (`--show-hidden-metrics-for-version`) measures each entry in its own line (`crate::gating`).

pub mod agent;
pub mod device;
pub mod dynamo;
pub mod gpu;
pub mod probe;
pub mod sched;
pub mod service;
pub mod structured;
pub mod vllm;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use crate::buckets::BucketFamily;
use crate::version::MinorVersion;

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Monotonic; exposed as `<name>_total` (plus `<name>_created`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets with explicit bounds; exposed as `_bucket`, `_count`, `_sum`, `_created`.
    Histogram,
}

impl Kind {
    /// The type as the exposition's `# TYPE` line spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A label of a family, and where its values come from. Values never come from user input:
/// every label is either Vigil's configuration or a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `model_name`: the served model name (`--served-model-name`, else the model path).
    ModelName,
    /// `engine`: the index of the engine core (`"0"` with one engine).
    Engine,
    /// A label whose value is one of a closed set; every value is pre-created at start-up.
    OneOf {
        /// The label's name.
        name: &'static str,
        /// Every value it may take.
        values: &'static [&'static str],
    },
    /// A label whose value is a configuration setting (e.g. `vllm:cache_config_info`).
    Config(&'static str),
    /// A label whose value the hardware reports (GPU index, UUID, model, PCI bus id, XID code,
    /// driver version): bounded by what is installed in the host, never by requests.
    Device(&'static str),
}

impl Label {
    /// The label's name.
    pub const fn name(&self) -> &'static str {
        match self {
            Label::ModelName => "model_name",
            Label::Engine => "engine",
            Label::OneOf { name, .. } => name,
            Label::Config(name) => name,
            Label::Device(name) => name,
        }
    }
}

/// Deprecation of an entry, for `crate::gating`.
#[derive(Debug, Clone, Copy)]
pub struct Deprecation {
    /// The minor version that deprecated it: a vLLM version for a `vllm:` entry, a Vigil version
    /// for the others.
    pub since: MinorVersion,
    /// The entry to use instead; named in the HELP text.
    pub use_instead: &'static MetricDef,
}

/// One family in the catalog.
#[derive(Debug)]
pub struct MetricDef {
    /// The family name as registered through the `metrics` facade. Counters are named without
    /// `_total`; the renderer adds it, as prometheus_client does.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// HELP text, exactly as vLLM (or Dynamo) writes it.
    pub help: &'static str,
    /// Label names in declaration order (rendered sorted, as prometheus_client does).
    pub labels: &'static [Label],
    /// Bucket family; every histogram has one.
    pub buckets: Option<BucketFamily>,
    /// Observations may carry a `request_id` exemplar (request-level histograms).
    pub exemplars: bool,
    /// Since when, and in favour of what, it is deprecated.
    pub deprecated: Option<Deprecation>,
    /// A legacy alias: rendered under this name with the values of the named entry, never
    /// recorded on its own.
    pub mirror_of: Option<&'static MetricDef>,
    /// Pre-created at start-up with value 0: one series per engine (and model) for every value of
    /// every [`Label::OneOf`], so dashboards show zeros, not gaps.
    pub precreate: bool,
    /// Value pre-created series of this value of its [`Label::OneOf`] label start at, instead of 0
    /// (vLLM starts `vllm:engine_sleep_state{sleep_state="awake"}` at 1).
    pub initial_one: Option<&'static str>,
    /// Part of the engine's statistics, which `--disable-log-stats` turns off as in vLLM.
    pub engine_stat: bool,
}

impl MetricDef {
    /// An entry with no buckets, no deprecation, not pre-created.
    pub const fn new(
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &'static [Label],
    ) -> Self {
        MetricDef {
            name,
            kind,
            help,
            labels,
            buckets: None,
            exemplars: false,
            deprecated: None,
            mirror_of: None,
            precreate: false,
            initial_one: None,
            engine_stat: false,
        }
    }

    /// Histogram buckets from `family`.
    pub const fn buckets(mut self, family: BucketFamily) -> Self {
        self.buckets = Some(family);
        self
    }

    /// Samples carry exemplars (trace ids) in OpenMetrics.
    pub const fn with_exemplars(mut self) -> Self {
        self.exemplars = true;
        self
    }

    /// Deprecated as `deprecation` says.
    pub const fn deprecated(mut self, deprecation: Deprecation) -> Self {
        self.deprecated = Some(deprecation);
        self
    }

    /// A legacy alias that shows `entry`'s values under its own name.
    pub const fn mirror_of(mut self, entry: &'static MetricDef) -> Self {
        self.mirror_of = Some(entry);
        self
    }

    /// Created at zero at start-up for every model and engine.
    pub const fn precreate(mut self) -> Self {
        self.precreate = true;
        self
    }

    /// An info series: one sample of value 1 labelled `value`.
    pub const fn initial_one(mut self, value: &'static str) -> Self {
        self.initial_one = Some(value);
        self
    }

    /// Recorded by the engine's per-step statistics.
    pub const fn engine_stat(mut self) -> Self {
        self.engine_stat = true;
        self
    }

    /// The HELP text as rendered: deprecated entries append vLLM's notice (without a separating
    /// space, exactly as vLLM wrote it).
    pub fn help_text(&self) -> Cow<'static, str> {
        match self.deprecated {
            None => Cow::Borrowed(self.help),
            Some(dep) => Cow::Owned(format!(
                "{}DEPRECATED: Use {} instead.",
                self.help, dep.use_instead.name
            )),
        }
    }

    /// The name samples are recorded under: the mirrored entry's for an alias.
    pub fn source_name(&self) -> &'static str {
        match self.mirror_of {
            Some(target) => target.name,
            None => self.name,
        }
    }

    /// Label names in declaration order.
    pub fn label_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.labels.iter().map(Label::name)
    }
}

/// Every entry of the catalog, in the order they are rendered and documented: vLLM's engine
/// series, Dynamo's runtime series, then the probes' status, GPU (NVML) and host scheduling
/// (eBPF) series, and the node agent's own.
pub fn all() -> impl Iterator<Item = &'static MetricDef> {
    [
        vllm::ALL,
        dynamo::ALL,
        probe::ALL,
        gpu::ALL,
        sched::ALL,
        device::ALL,
        agent::ALL,
        service::ALL,
        structured::ALL,
    ]
    .into_iter()
    .flat_map(|family| family.iter().copied())
}

/// Looks an entry up by family name.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    static INDEX: OnceLock<HashMap<&'static str, &'static MetricDef>> = OnceLock::new();
    INDEX
        .get_or_init(|| all().map(|d| (d.name, d)).collect())
        .get(name)
        .copied()
}

/// Families of the upstream catalogs that Vigil does not emit, and why; listed in the generated
/// reference so that their absence is a decision, not an oversight.
pub fn omitted() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    vllm::OMITTED.iter()
}

/// Every label set `def` is pre-created with for one model and its engines: the cross product of
/// its labels' values (every value of each [`Label::OneOf`]), in catalog label order.
///
/// # Panics
/// If `def` has a [`Label::Config`] or [`Label::Device`] label: those cannot be enumerated.
pub fn precreated_label_sets(
    def: &MetricDef,
    model_name: &str,
    engines: &[&str],
) -> Vec<Vec<metrics::Label>> {
    let mut sets: Vec<Vec<metrics::Label>> = vec![Vec::new()];
    for label in def.labels {
        let values: Vec<String> = match label {
            Label::ModelName => vec![model_name.to_owned()],
            Label::Engine => engines.iter().map(|e| (*e).to_owned()).collect(),
            Label::OneOf { values, .. } => values.iter().map(|v| (*v).to_owned()).collect(),
            Label::Config(name) | Label::Device(name) => {
                panic!("{}: label {name} cannot be pre-created", def.name)
            }
        };
        sets = sets
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |v| {
                    let mut s = set.clone();
                    s.push(metrics::Label::new(label.name(), v.clone()));
                    s
                })
            })
            .collect();
    }
    sets
}

/// Describes every catalog entry through the `metrics` facade (`describe_counter!` and friends),
/// for recorders other than Vigil's own, which reads HELP text straight from the catalog.
pub fn describe_all() {
    for def in all().filter(|d| d.mirror_of.is_none()) {
        let help = def.help_text().into_owned();
        match def.kind {
            Kind::Counter => metrics::describe_counter!(def.name, help),
            Kind::Gauge => metrics::describe_gauge!(def.name, help),
            Kind::Histogram => metrics::describe_histogram!(def.name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for def in all() {
            assert!(seen.insert(def.name), "duplicate {}", def.name);
            assert!(
                def.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{}",
                def.name
            );
            assert!(!def.name.starts_with(|c: char| c.is_ascii_digit()));
            if def.kind == Kind::Counter {
                assert!(
                    !def.name.ends_with("_total"),
                    "counter {} is named without _total",
                    def.name
                );
            }
            assert!(!def.help.is_empty(), "{}", def.name);
        }
        for (name, why) in omitted() {
            assert!(
                !seen.contains(name),
                "{name} is both catalogued and omitted"
            );
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn every_histogram_has_buckets_and_nothing_else_does() {
        for def in all() {
            assert_eq!(
                def.kind == Kind::Histogram,
                def.buckets.is_some(),
                "{}",
                def.name
            );
            if def.exemplars {
                assert_eq!(def.kind, Kind::Histogram, "{}", def.name);
            }
        }
    }

    #[test]
    fn mirrors_match_their_target() {
        for def in all() {
            if let Some(target) = def.mirror_of {
                assert_eq!(def.kind, target.kind, "{}", def.name);
                assert_eq!(
                    def.label_names().collect::<Vec<_>>(),
                    target.label_names().collect::<Vec<_>>()
                );
                assert_eq!(def.buckets, target.buckets, "{}", def.name);
                assert!(target.mirror_of.is_none(), "{} mirrors a mirror", def.name);
                assert!(
                    find(target.name).is_some(),
                    "{} mirrors an uncatalogued entry",
                    def.name
                );
            }
            if let Some(dep) = def.deprecated {
                assert!(find(dep.use_instead.name).is_some(), "{}", def.name);
            }
        }
    }

    #[test]
    fn find_returns_entries() {
        assert_eq!(
            find(vllm::PROMPT_TOKENS.name).map(|d| d.name),
            Some(vllm::PROMPT_TOKENS.name)
        );
        assert!(find("vllm:no_such_metric").is_none());
    }
}
