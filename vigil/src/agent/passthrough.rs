//! Passing an engine's own metrics through, as Dynamo's engine-metrics callback does.
//!
//! Passing an engine's own metrics through, as Dynamo's engine-metrics callback does
//! (`register_engine_metrics_callback`): keep the families whose names start with the configured
//! prefixes, and add the `dynamo_*` labels to every sample without overwriting labels the engine
//! already set. The engine's exposition arrives parsed ([`exporter::Exposition`]), so what is written
//! back is valid whatever the engine sent, and three rules keep it one valid exposition with the
//! agent's own series: a family the agent exports itself is not copied (it would appear twice),
//! and labels are not injected into samples where that would make two of the engine's series
//! one (whether the other keeps its labels or gets the same injection).

use std::collections::HashSet;

use exporter::Exposition;

/// Suffixes a sample's name adds to its family's name.
const SAMPLE_SUFFIXES: &[&str] = &["_total", "_created", "_bucket", "_sum", "_count", "_info"];

/// Which of the engine's families pass, and the labels they get.
pub struct Relay {
    prefixes: Vec<String>,
    /// The agent's own families.
    own: HashSet<String>,
    inject: Vec<(String, String)>,
}

impl Relay {
    /// A relay that passes families starting with any of `prefixes` except the agent's `own`,
    /// adding the `inject` labels to each sample.
    pub fn new(prefixes: Vec<String>, own: HashSet<String>, inject: Vec<(String, String)>) -> Self {
        Relay {
            prefixes,
            own,
            inject,
        }
    }

    /// Whether the family or sample `name` is passed through.
    pub fn passes(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str())) && !self.is_own(name)
    }

    /// Whether the sample or family `name` is one the agent exports itself.
    fn is_own(&self, name: &str) -> bool {
        self.own.contains(name)
            || SAMPLE_SUFFIXES
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .any(|family| self.own.contains(family))
    }

    /// Whether `exposition` has a sample of a family that passes.
    pub fn has_engine_samples(&self, exposition: &Exposition) -> bool {
        exposition
            .families
            .iter()
            .any(|f| self.passes(f.name) && !f.samples.is_empty())
    }

    /// The families that pass, relabeled, in the text format. A family named like a sample of
    /// a histogram or summary (`x_count` beside summary `x`, from metadata the engine wrote for
    /// it) is one family to Prometheus's parser, which refuses its second HELP or TYPE: the
    /// reader gave its samples to that family, and its metadata is left out.
    pub fn relay(&self, exposition: &Exposition) -> String {
        let mut out = String::new();
        for (f, family) in exposition.families.iter().enumerate() {
            if !self.passes(family.name) || exposition.is_suffix_of_another(f) {
                continue;
            }
            family.render_metadata(&mut out);
            let injected = self.injections(&family.samples);
            for (sample, inject) in family.samples.iter().zip(&injected) {
                let inject: Vec<(&str, &str)> = inject
                    .iter()
                    .map(|&i| (self.inject[i].0.as_str(), self.inject[i].1.as_str()))
                    .collect();
                sample.render(&mut out, &inject);
            }
        }
        out
    }

    /// Which of the labels to inject each sample gets (indexes into `inject`): those it does
    /// not set itself, except where the result would be the series of another sample as that
    /// one comes out. Such samples keep their own labels only; since the engine's series are
    /// distinct, undoing injections until no two coincide ends with every series distinct.
    fn injections(&self, samples: &[exporter::Sample<'_>]) -> Vec<Vec<usize>> {
        let mut injected: Vec<Vec<usize>> = samples
            .iter()
            .map(|s| {
                (0..self.inject.len())
                    .filter(|&i| s.label(&self.inject[i].0).is_none())
                    .collect()
            })
            .collect();
        // A series' identity as it comes out, hashed (two distinct series with one hash, a
        // 64-bit chance, only lose their injections: the output stays distinct).
        let identity = |s: &exporter::Sample<'_>, inject: &[usize]| {
            let labels: Vec<_> = s.labels.iter().collect();
            exporter::series_hash(
                s.name,
                labels.iter().map(|(n, v)| (*n, v.as_ref())).chain(
                    inject
                        .iter()
                        .map(|&i| (self.inject[i].0.as_str(), self.inject[i].1.as_str())),
                ),
            )
        };
        loop {
            let mut seen: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
            let mut undo = Vec::new();
            for (i, (s, inject)) in samples.iter().zip(&injected).enumerate() {
                match seen.entry(identity(s, inject)) {
                    std::collections::hash_map::Entry::Occupied(other) => undo.extend(
                        [*other.get(), i]
                            .into_iter()
                            .filter(|&k| !injected[k].is_empty()),
                    ),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }
            if undo.is_empty() {
                return injected;
            }
            for k in undo {
                injected[k].clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject() -> Vec<(String, String)> {
        [
            ("dynamo_namespace", "ns"),
            ("dynamo_component", "backend"),
            ("dynamo_endpoint", "generate"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    fn relay(text: &str, prefixes: &[&str], own: &[&str], inject: Vec<(String, String)>) -> String {
        let relay = Relay::new(
            prefixes.iter().map(|p| (*p).to_owned()).collect(),
            own.iter().map(|p| (*p).to_owned()).collect(),
            inject,
        );
        relay.relay(&Exposition::parse(text.as_bytes(), |n| relay.passes(n)))
    }

    #[test]
    fn keeps_prefixed_families_and_injects_labels() {
        let text = "# HELP vllm:num_requests_running Number of requests.\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
                    # HELP python_gc_objects_collected_total Objects collected.\n\
                    # TYPE python_gc_objects_collected_total counter\n\
                    python_gc_objects_collected_total{generation=\"0\"} 12.0\n\
                    \n\
                    vllm:plain 1\n";
        assert_eq!(
            relay(text, &["vllm:"], &[], inject()),
            "# HELP vllm:num_requests_running Number of requests.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{engine=\"0\",model_name=\"m\",dynamo_namespace=\"ns\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 3.0\n\
             vllm:plain{dynamo_namespace=\"ns\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 1.0\n"
        );
    }

    #[test]
    fn never_overwrites_the_engines_labels_and_respects_quotes() {
        let text = "vllm:x{dynamo_namespace=\"theirs\",path=\"a}b,c=\\\"d\\\"\"} 2 1700000000000\n";
        assert_eq!(
            relay(text, &["vllm:"], &[], inject()),
            "vllm:x{dynamo_namespace=\"theirs\",path=\"a}b,c=\\\"d\\\"\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 2.0 1700000000000\n"
        );
    }

    #[test]
    fn several_prefixes() {
        let text = "lmcache:hits 1\nvllm:y 2\nsglang:z 3\n";
        assert_eq!(
            relay(text, &["vllm:", "lmcache:"], &[], vec![]),
            "lmcache:hits 1.0\nvllm:y 2.0\n"
        );
    }

    #[test]
    fn a_family_the_agent_exports_itself_is_not_copied() {
        let text = "# TYPE dynamo_component_uptime_seconds gauge\n\
                    dynamo_component_uptime_seconds 5\n\
                    # TYPE dynamo_component_requests_total counter\n\
                    dynamo_component_requests_total 7\n";
        assert_eq!(
            relay(
                text,
                &["dynamo_"],
                &["dynamo_component_uptime_seconds"],
                vec![]
            ),
            "# TYPE dynamo_component_requests_total counter\ndynamo_component_requests_total 7.0\n"
        );
        // A counter family named without its suffix covers its samples.
        let out = relay(text, &["dynamo_"], &["dynamo_component_requests"], vec![]);
        assert!(!out.contains("requests_total"), "{out}");
    }

    #[test]
    fn injected_labels_never_make_two_series_one() {
        // The engine already has the series the injection would make of the second line.
        let text = "vllm:x{dynamo_namespace=\"ns\"} 1\nvllm:x 2\nvllm:y 3\n";
        let inject = vec![("dynamo_namespace".to_owned(), "ns".to_owned())];
        assert_eq!(
            relay(text, &["vllm:"], &[], inject.clone()),
            "vllm:x{dynamo_namespace=\"ns\"} 1.0\nvllm:x 2.0\nvllm:y{dynamo_namespace=\"ns\"} 3.0\n"
        );
        // Either order.
        let text = "vllm:x 2\nvllm:x{dynamo_namespace=\"ns\"} 1\n";
        assert_eq!(
            relay(text, &["vllm:"], &[], inject),
            "vllm:x 2.0\nvllm:x{dynamo_namespace=\"ns\"} 1.0\n"
        );
    }

    /// Two of the engine's series that each lack a different one of the injected labels would
    /// both come out with all of them, as one series: neither gets the injection.
    #[test]
    fn injections_into_both_of_two_series_never_make_them_one() {
        let text = "vllm:x{dynamo_component=\"backend\"} 1\nvllm:x 2\nvllm:y 3\n";
        let out = relay(text, &["vllm:"], &[], inject());
        assert_eq!(
            out,
            "vllm:x{dynamo_component=\"backend\"} 1.0\nvllm:x 2.0\n\
             vllm:y{dynamo_namespace=\"ns\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 3.0\n"
        );
    }

    #[test]
    fn what_prometheus_would_refuse_is_left_out_and_the_rest_passes() {
        let text = "# HELP vllm:x X.\n# HELP vllm:x Again.\n# TYPE vllm:x gauge\n\
                    vllm:x{a=\"1\"} 1\nvllm:x{a=\"2\" 2\nvllm:x{a=\"3\"} 1e400\n\
                    vllm:x{a=\"4\"} 4 # {trace_id=\"t\"} 1\n";
        assert_eq!(
            relay(text, &["vllm:"], &[], vec![]),
            "# HELP vllm:x X.\n# TYPE vllm:x gauge\nvllm:x{a=\"1\"} 1.0\nvllm:x{a=\"4\"} 4.0\n"
        );
    }
}
