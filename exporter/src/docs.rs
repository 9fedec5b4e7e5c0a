//! The generated metric reference (`docs/metrics.md`), written by `cargo xtask docs`.

use std::fmt::Write;

use crate::buckets::BucketFamily;
use crate::catalog::{self, Kind, Label, MetricDef};
use crate::gating::{self, Running, Visibility};
use crate::render::number::format_float;

/// The `max_model_len` the reference shows token-count buckets for.
const EXAMPLE_MAX_MODEL_LEN: u64 = 8192;

/// The whole reference, as Markdown.
pub fn metrics_markdown() -> String {
    let running = Running::current();
    let mut s = String::new();
    let _ = writeln!(s, "# Metric reference\n");
    let _ = writeln!(
        s,
        "<!-- Generated from the catalog in exporter/src/catalog by `cargo xtask docs`; do not edit. -->\n"
    );
    let _ = writeln!(
        s,
        "Every series Vigil {} can emit on `/metrics`. Counters are exposed as `<name>_total` \
         (and `<name>_created`); histograms as `<name>_bucket`, `_count`, `_sum` (and `_created`). \
         Labels render sorted by name. Series marked *pre-created* exist with value 0 from start-up.\n",
        running.vigil
    );
    let _ = writeln!(
        s,
        "Deprecation policy: a metric deprecated in X.Y is shown (its HELP says so) in X.Y, hidden in \
         X.Y+1 unless `--show-hidden-metrics-for-version=X.Y`, and removed in X.Y+2. The `vllm:` \
         series follow vLLM's version line (the catalog is vLLM {}'s), every other series Vigil's \
         ({}). The flag accepts {}.\n",
        running.vllm,
        running.vigil,
        running
            .accepted()
            .iter()
            .map(|(v, what)| format!("`{v}` ({what} hides them)"))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let _ = writeln!(s, "## Bucket families\n");
    let _ = writeln!(s, "| family | upper bounds (`+Inf` implied) |\n|---|---|");
    for family in BucketFamily::ALL.into_iter().chain(BucketFamily::FIXED) {
        let bounds = if family == BucketFamily::RequestTokens {
            format!(
                "1-2-5 series up to `max_model_len`; for {EXAMPLE_MAX_MODEL_LEN}: {}",
                bounds_list(family)
            )
        } else {
            bounds_list(family)
        };
        let _ = writeln!(s, "| `{}` | {bounds} |", family.key());
    }
    let _ = writeln!(s, "\n## Series\n");
    for def in catalog::all() {
        write_entry(&mut s, def, running);
    }
    let _ = writeln!(s, "## Not emitted\n");
    let _ = writeln!(s, "| family | why |\n|---|---|");
    for (name, why) in catalog::omitted() {
        let _ = writeln!(s, "| `{name}` | {why} |");
    }
    s
}

fn bounds_list(family: BucketFamily) -> String {
    family
        .default_bounds(EXAMPLE_MAX_MODEL_LEN)
        .into_iter()
        .map(format_float)
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_entry(s: &mut String, def: &MetricDef, running: Running) {
    let exposed = match def.kind {
        Kind::Counter => format!("`{0}_total`, `{0}_created`", def.name),
        Kind::Gauge => format!("`{}`", def.name),
        Kind::Histogram => format!(
            "`{0}_bucket`, `{0}_count`, `{0}_sum`, `{0}_created`",
            def.name
        ),
    };
    let _ = writeln!(s, "### `{}`\n", def.name);
    let _ = writeln!(s, "- type: {}; exposed as {exposed}", def.kind.as_str());
    let _ = writeln!(s, "- HELP: `{}`", def.help_text());
    let labels: Vec<String> = def
        .labels
        .iter()
        .map(|l| match l {
            Label::ModelName => "`model_name` (served model name)".to_owned(),
            Label::Engine => "`engine` (engine index)".to_owned(),
            Label::OneOf { name, values } => format!("`{name}` ∈ {{{}}}", values.join(", ")),
            Label::Config(name) => format!("`{name}` (setting)"),
            Label::Device(name) => format!("`{name}` (hardware)"),
        })
        .collect();
    let _ = writeln!(
        s,
        "- labels: {}",
        if labels.is_empty() {
            "none".to_owned()
        } else {
            labels.join(", ")
        }
    );
    if let Some(family) = def.buckets {
        let _ = writeln!(s, "- buckets: `{}`", family.key());
    }
    let mut notes = Vec::new();
    if def.precreate {
        notes.push("pre-created".to_owned());
    }
    if def.exemplars {
        notes.push("`request_id` exemplars with `--enable-exemplars` (OpenMetrics)".to_owned());
    }
    if def.engine_stat {
        notes.push("off with `--disable-log-stats`".to_owned());
    }
    if let Some(target) = def.mirror_of {
        notes.push(format!("alias with the values of `{}`", target.name));
    }
    if let Some(dep) = def.deprecated {
        let line = running.of(def);
        let state = match gating::visibility(def, running, None) {
            Visibility::Shown => "shown".to_owned(),
            Visibility::Hidden => format!(
                "hidden in {line}; `--show-hidden-metrics-for-version={}` shows it",
                dep.since
            ),
            Visibility::Removed => format!("removed in {line}"),
        };
        notes.push(format!("deprecated in {} ({state})", dep.since));
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "- {}", notes.join("; "));
    }
    let _ = writeln!(s);
}
