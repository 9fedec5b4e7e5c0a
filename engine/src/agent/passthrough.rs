//! Passing an engine's own metrics through, as Dynamo's engine-metrics callback does
//! (`register_engine_metrics_callback`): keep the families whose names start with the configured
//! prefixes, and add the `dynamo_*` labels to every sample without overwriting labels the engine
//! already set. Two rules keep the result one valid exposition: a family the agent exports itself
//! is not copied (it would appear twice), and a label is not injected where that would make a
//! sample identical to another of the engine's (two distinct series would become one).

use std::collections::HashSet;

/// Suffixes a sample's name adds to its family's name.
const SAMPLE_SUFFIXES: &[&str] = &["_total", "_created", "_bucket", "_sum", "_count", "_info"];

/// Filters and relabels the Prometheus text `text`: `# HELP`/`# TYPE` lines and samples of
/// families starting with one of `prefixes` and not among `own` (the agent's own families) are
/// kept (other comments and blank lines dropped); each kept sample gets the `inject` labels it
/// does not already have, unless that would repeat another sample of the engine.
pub fn passthrough(
    text: &str,
    prefixes: &[String],
    own: &HashSet<String>,
    inject: &[(&str, &str)],
) -> String {
    let kept = |name: &str| matches(name, prefixes) && !is_own(name, own);
    // The engine's own series, to keep injected labels from recreating one of them.
    let mut seen: HashSet<String> = HashSet::new();
    for line in text.lines().map(str::trim_start) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = sample_name_end(line);
        if kept(&line[..name_end]) {
            if let Some(key) = series_key(line, name_end) {
                seen.insert(key);
            }
        }
    }
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('#') {
            let rest = rest.trim_start();
            let name = rest
                .strip_prefix("HELP ")
                .or_else(|| rest.strip_prefix("TYPE "))
                .and_then(|r| r.split_whitespace().next());
            if name.is_some_and(kept) {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let name_end = sample_name_end(trimmed);
        if !kept(&trimmed[..name_end]) {
            continue;
        }
        let relabeled = relabel(trimmed, name_end, inject);
        let key = series_key(&relabeled, name_end);
        if relabeled != trimmed && key.is_some_and(|k| !seen.insert(k)) {
            // The injected labels would make this sample another one's twin: as it is.
            out.push_str(trimmed);
        } else {
            out.push_str(&relabeled);
        }
        out.push('\n');
    }
    out
}

/// Where a sample line's metric name ends.
fn sample_name_end(line: &str) -> usize {
    line.find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len())
}

/// Whether the sample or family `name` is one the agent exports itself.
fn is_own(name: &str, own: &HashSet<String>) -> bool {
    own.contains(name)
        || SAMPLE_SUFFIXES
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .any(|family| own.contains(family))
}

/// A sample's identity: its name and its labels, sorted (`None` when malformed).
fn series_key(sample: &str, name_end: usize) -> Option<String> {
    let (name, rest) = sample.split_at(name_end);
    let mut pairs = match rest.strip_prefix('{') {
        Some(r) => label_pairs(&r[..label_set_end(r)?]),
        None => Vec::new(),
    };
    pairs.sort();
    Some(format!("{name}{pairs:?}"))
}

fn matches(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// `sample` with the `inject` labels it lacks added at the end of its label set.
fn relabel(sample: &str, name_end: usize, inject: &[(&str, &str)]) -> String {
    let (name, rest) = sample.split_at(name_end);
    let (existing, after) = match rest.strip_prefix('{') {
        Some(r) => match label_set_end(r) {
            Some(end) => (&r[..end], &r[end + 1..]),
            // Malformed: leave the line as it is.
            None => return sample.to_owned(),
        },
        None => ("", rest),
    };
    let present = label_names(existing);
    let mut labels = existing.trim_end().trim_end_matches(',').to_owned();
    for (k, v) in inject {
        if present.iter().any(|p| p == k) {
            continue;
        }
        if !labels.is_empty() {
            labels.push(',');
        }
        labels.push_str(k);
        labels.push_str("=\"");
        labels.push_str(&escape(v));
        labels.push('"');
    }
    if labels.is_empty() {
        return format!("{name}{after}");
    }
    format!("{name}{{{labels}}}{after}")
}

/// The index of the `}` closing a label set (skipping quoted values and their escapes).
fn label_set_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (in_quotes, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_quotes = false,
            (false, _, '"') => in_quotes = true,
            (false, _, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The labels of a label set's inside (`a="x",b="y"`): names and values as written.
fn label_pairs(s: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut name = String::new();
    let mut value = String::new();
    let mut reading_name = true;
    for c in s.chars() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_quotes = false;
                    pairs.push((name.trim().to_owned(), std::mem::take(&mut value)));
                    name.clear();
                    continue;
                }
                _ => {}
            }
            value.push(c);
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '=' if reading_name => reading_name = false,
            ',' => reading_name = true,
            _ if reading_name => name.push(c),
            _ => {}
        }
    }
    pairs
}

/// The label names of a label set's inside.
fn label_names(s: &str) -> Vec<String> {
    label_pairs(s).into_iter().map(|(name, _)| name).collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECT: &[(&str, &str)] = &[
        ("dynamo_namespace", "ns"),
        ("dynamo_component", "backend"),
        ("dynamo_endpoint", "generate"),
    ];

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
        let out = passthrough(text, &["vllm:".to_owned()], &HashSet::new(), INJECT);
        assert_eq!(
            out,
            "# HELP vllm:num_requests_running Number of requests.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{engine=\"0\",model_name=\"m\",dynamo_namespace=\"ns\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 3.0\n\
             vllm:plain{dynamo_namespace=\"ns\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 1\n"
        );
    }

    #[test]
    fn never_overwrites_the_engines_labels_and_respects_quotes() {
        let text = "vllm:x{dynamo_namespace=\"theirs\",path=\"a}b,c=\\\"d\\\"\"} 2 1700000000000\n";
        let out = passthrough(text, &["vllm:".to_owned()], &HashSet::new(), INJECT);
        assert_eq!(
            out,
            "vllm:x{dynamo_namespace=\"theirs\",path=\"a}b,c=\\\"d\\\"\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 2 1700000000000\n"
        );
    }

    #[test]
    fn several_prefixes() {
        let text = "lmcache:hits 1\nvllm:y 2\nsglang:z 3\n";
        let out = passthrough(
            text,
            &["vllm:".to_owned(), "lmcache:".to_owned()],
            &HashSet::new(),
            &[],
        );
        assert_eq!(out, "lmcache:hits 1\nvllm:y 2\n");
    }

    #[test]
    fn a_family_the_agent_exports_itself_is_not_copied() {
        let text = "# TYPE dynamo_component_uptime_seconds gauge\n\
                    dynamo_component_uptime_seconds 5\n\
                    # TYPE dynamo_component_requests_total counter\n\
                    dynamo_component_requests_total 7\n";
        let own: HashSet<String> = ["dynamo_component_uptime_seconds".to_owned()].into();
        let out = passthrough(text, &["dynamo_".to_owned()], &own, &[]);
        assert_eq!(
            out,
            "# TYPE dynamo_component_requests_total counter\ndynamo_component_requests_total 7\n"
        );
        // A counter family named without its suffix covers its samples.
        let own: HashSet<String> = ["dynamo_component_requests".to_owned()].into();
        let out = passthrough(text, &["dynamo_".to_owned()], &own, &[]);
        assert!(!out.contains("requests_total"), "{out}");
    }

    #[test]
    fn injected_labels_never_make_two_series_one() {
        // The engine already has the series the injection would make of the second line.
        let text = "vllm:x{dynamo_namespace=\"ns\"} 1\nvllm:x 2\nvllm:y 3\n";
        let inject = &[("dynamo_namespace", "ns")];
        let out = passthrough(text, &["vllm:".to_owned()], &HashSet::new(), inject);
        assert_eq!(
            out,
            "vllm:x{dynamo_namespace=\"ns\"} 1\nvllm:x 2\nvllm:y{dynamo_namespace=\"ns\"} 3\n"
        );
        // Either order.
        let text = "vllm:x 2\nvllm:x{dynamo_namespace=\"ns\"} 1\n";
        let out = passthrough(text, &["vllm:".to_owned()], &HashSet::new(), inject);
        assert_eq!(out, text);
    }

    #[test]
    fn label_pairs_keep_values_as_written() {
        assert_eq!(
            label_pairs("a=\"x\",b=\"y\\\"z\",c=\"\""),
            vec![
                ("a".to_owned(), "x".to_owned()),
                ("b".to_owned(), "y\\\"z".to_owned()),
                ("c".to_owned(), String::new()),
            ]
        );
    }
}
