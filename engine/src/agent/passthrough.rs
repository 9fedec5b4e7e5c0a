//! Passing an engine's own metrics through, as Dynamo's engine-metrics callback does
//! (`register_engine_metrics_callback`): keep the families whose names start with the configured
//! prefixes, and add the `dynamo_*` labels to every sample without overwriting labels the engine
//! already set.

/// Filters and relabels the Prometheus text `text`: `# HELP`/`# TYPE` lines and samples of
/// families starting with one of `prefixes` are kept (other comments and blank lines dropped);
/// each kept sample gets the `inject` labels it does not already have.
pub fn passthrough(text: &str, prefixes: &[String], inject: &[(&str, &str)]) -> String {
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
            if name.is_some_and(|n| matches(n, prefixes)) {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let name_end = trimmed
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(trimmed.len());
        if !matches(&trimmed[..name_end], prefixes) {
            continue;
        }
        out.push_str(&relabel(trimmed, name_end, inject));
        out.push('\n');
    }
    out
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

/// The label names of a label set's inside (`a="x",b="y"`).
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut current = String::new();
    let mut reading_name = true;
    for c in s.chars() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '=' if reading_name => {
                names.push(current.trim().to_owned());
                current.clear();
                reading_name = false;
            }
            ',' => reading_name = true,
            _ if reading_name => current.push(c),
            _ => {}
        }
    }
    names
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
        let out = passthrough(text, &["vllm:".to_owned()], INJECT);
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
        let out = passthrough(text, &["vllm:".to_owned()], INJECT);
        assert_eq!(
            out,
            "vllm:x{dynamo_namespace=\"theirs\",path=\"a}b,c=\\\"d\\\"\",dynamo_component=\"backend\",dynamo_endpoint=\"generate\"} 2 1700000000000\n"
        );
    }

    #[test]
    fn several_prefixes() {
        let text = "lmcache:hits 1\nvllm:y 2\nsglang:z 3\n";
        let out = passthrough(text, &["vllm:".to_owned(), "lmcache:".to_owned()], &[]);
        assert_eq!(out, "lmcache:hits 1\nvllm:y 2\n");
    }
}
