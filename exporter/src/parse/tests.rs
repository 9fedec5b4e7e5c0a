//! The lenient reader against expositions Prometheus accepts and refuses.

use super::*;

fn all(body: &str) -> Exposition<'_> {
    Exposition::parse(body.as_bytes(), |_| true)
}

fn render(e: &Exposition) -> String {
    let mut out = String::new();
    for f in &e.families {
        f.render(&mut out);
    }
    out
}

fn reasons(e: &Exposition) -> Vec<&'static str> {
    e.problems.iter().map(|(p, _)| p.reason()).collect()
}

#[test]
fn a_valid_exposition_reads_back_as_written() {
    let body = "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
                # TYPE vllm:num_requests_running gauge\n\
                vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
                # HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.\n\
                # TYPE vllm:e2e_request_latency_seconds histogram\n\
                vllm:e2e_request_latency_seconds_bucket{le=\"0.3\",model_name=\"m\"} 1.0\n\
                vllm:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 2.0\n\
                vllm:e2e_request_latency_seconds_count{model_name=\"m\"} 2.0\n\
                vllm:e2e_request_latency_seconds_sum{model_name=\"m\"} 0.7 1700000000000\n";
    let e = all(body);
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    assert_eq!(e.families.len(), 2);
    assert_eq!(e.families[1].kind, Some(MetricType::Histogram));
    assert_eq!(e.families[1].samples.len(), 4);
    assert_eq!(render(&e), body);
}

#[test]
fn label_values_unescape_and_escape_again() {
    let body = "x{path=\"a}b,c=\\\"d\\\"\",nl=\"1\\n2\",bs=\"\\\\\",odd=\"\\t\"} 1.0\n";
    let e = all(body);
    let s = &e.families[0].samples[0];
    assert_eq!(s.label("path").as_deref(), Some("a}b,c=\"d\""));
    assert_eq!(s.label("nl").as_deref(), Some("1\n2"));
    assert_eq!(s.label("bs").as_deref(), Some("\\"));
    // An escape Prometheus does not know stays as written, and reads back the same.
    assert_eq!(s.label("odd").as_deref(), Some("\\t"));
    let text = render(&e);
    let again = all(&text);
    let labels = |s: &Sample| {
        s.labels
            .iter()
            .map(|(n, v)| (n.to_owned(), v.into_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&again.families[0].samples[0]), labels(s));
}

#[test]
fn each_kind_of_bad_line_is_left_out_and_named() {
    for (line, reason) in [
        ("vllm:x{a=\"1\" 2\n", "malformed_sample"),
        ("vllm:x{a=1} 2\n", "malformed_sample"),
        ("vllm:x{1a=\"1\"} 2\n", "malformed_sample"),
        ("vllm:x{a=\"unterminated} 2\n", "malformed_sample"),
        ("vllm:x\n", "malformed_sample"),
        ("vllm:x{a=\"1\"}\n", "malformed_sample"),
        ("vllm:x 1 2 3\n", "malformed_sample"),
        ("vllm:x{a=\"1\"} 1e400\n", "invalid_value"),
        ("vllm:x -1e400\n", "invalid_value"),
        ("vllm:x one\n", "invalid_value"),
        ("vllm:x 0x1p3\n", "invalid_value"),
        ("vllm:x +NaN\n", "invalid_value"),
        ("vllm:x 1 1.5\n", "invalid_timestamp"),
        ("vllm:x 1 99999999999999999999\n", "invalid_timestamp"),
        ("vllm:x{a=\"1\",a=\"2\"} 1\n", "duplicate_label"),
        ("# TYPE vllm:x stateset\n", "unknown_type"),
        ("# TYPE vllm:x\n", "unknown_type"),
        ("# HELP 1bad text\n", "malformed_metadata"),
    ] {
        let e = all(line);
        assert_eq!(reasons(&e), vec![reason], "{line:?}");
        assert!(!e.has_samples(), "{line:?}");
    }
}

#[test]
fn special_values_are_go_floats() {
    let e = all("a +Inf\nb -inf\nc NaN\nd Infinity\ne 1e-400\nf .5\n");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    let text = render(&e);
    assert_eq!(text, "a +Inf\nb -Inf\nc NaN\nd +Inf\ne 0.0\nf 0.5\n");
}

#[test]
fn a_raw_newline_in_a_label_value_is_read_as_prometheus_reads_it() {
    // Prometheus's lexer takes any character but `"` and `\` inside quotes.
    let body = "vllm:ok 1\nvllm:x{a=\"first\nsecond\",b=\"c\"} 2\nvllm:also_ok 3\n";
    let e = all(body);
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    assert_eq!(
        e.families[1].samples[0].label("a").as_deref(),
        Some("first\nsecond")
    );
    assert_eq!(
        render(&e),
        "vllm:ok 1.0\nvllm:x{a=\"first\\nsecond\",b=\"c\"} 2.0\nvllm:also_ok 3.0\n"
    );
}

#[test]
fn an_unterminated_quote_costs_its_own_line_only() {
    let body = "vllm:x{a=\"open} 2\nvllm:ok 1\nvllm:also_ok 3\n";
    let e = all(body);
    assert_eq!(reasons(&e), vec!["malformed_sample"]);
    assert_eq!(render(&e), "vllm:ok 1.0\nvllm:also_ok 3.0\n");
}

/// Prometheus's parser refuses a `__name__` label ("label name `__name__` is reserved") and
/// marks the whole target down: the sample is left out, the rest passes.
#[test]
fn a_name_label_is_left_out() {
    let e = all("vllm:x{__name__=\"vllm:y\"} 1\nvllm:x{a=\"__name__\"} 2\n");
    assert_eq!(reasons(&e), vec!["reserved_label"]);
    assert_eq!(render(&e), "vllm:x{a=\"__name__\"} 2.0\n");
}

/// What else Prometheus's parser refuses, and so the whole scrape with it: a HELP escape other
/// than `\\` and `\n`, a histogram's `le` or a summary's `quantile` that is not a number.
#[test]
fn bad_help_escapes_and_bounds_are_left_out() {
    let body = "# HELP vllm:x A \\q escape.\n# HELP vllm:y Fine \\\\ and \\n.\n\
                # TYPE vllm:h histogram\nvllm:h_bucket{le=\"abc\"} 1\nvllm:h_bucket{le=\"+Inf\"} 2\n\
                vllm:h_sum{le=\"x\"} 3\n# TYPE vllm:s summary\nvllm:s{quantile=\"NaN\"} 4\n\
                vllm:s{quantile=\"high\"} 5\n";
    let e = all(body);
    assert_eq!(
        reasons(&e),
        vec![
            "malformed_metadata",
            "invalid_value",
            "invalid_value",
            "invalid_value"
        ]
    );
    assert_eq!(
        render(&e),
        "# HELP vllm:y Fine \\\\ and \\n.\n# TYPE vllm:h histogram\nvllm:h_bucket{le=\"+Inf\"} 2.0\n\
         # TYPE vllm:s summary\nvllm:s{quantile=\"NaN\"} 4.0\n"
    );
}

/// Metadata the engine wrote for a name that is a sample of a histogram or summary (`x_count`
/// beside summary `x`) would be a second HELP or TYPE of that family to Prometheus: the samples
/// are the family's, whichever came first.
#[test]
fn a_family_named_like_a_summarys_sample_joins_it() {
    let body = "vllm:s_count 9\n# TYPE vllm:s summary\nvllm:s_sum 3\n# TYPE vllm:s_count counter\n";
    let e = all(body);
    let s = e.families.iter().position(|f| f.name == "vllm:s").unwrap();
    let names: Vec<&str> = e.families[s].samples.iter().map(|x| x.name).collect();
    assert_eq!(names, vec!["vllm:s_sum", "vllm:s_count"]);
    let count = e
        .families
        .iter()
        .position(|f| f.name == "vllm:s_count")
        .unwrap();
    assert!(e.is_suffix_of_another(count));
    assert!(e.families[count].samples.is_empty());
    assert!(e.find("vllm:s_count", std::iter::empty()).is_some());
}

#[test]
fn an_exemplar_is_dropped_and_its_sample_kept() {
    let e = all("vllm:h_bucket{le=\"1\"} 3 # {trace_id=\"abc\"} 0.5 1700000000.1\n");
    assert_eq!(reasons(&e), vec!["exemplar"]);
    assert_eq!(render(&e), "vllm:h_bucket{le=\"1\"} 3.0\n");
}

#[test]
fn repeated_metadata_and_series_keep_the_first() {
    let body = "# HELP vllm:x First.\n# HELP vllm:x Second.\n# TYPE vllm:x gauge\n\
                # TYPE vllm:x counter\nvllm:x{a=\"1\"} 1\nvllm:x{a=\"1\"} 2\n";
    let e = all(body);
    assert_eq!(
        reasons(&e),
        vec![
            "duplicate_metadata",
            "duplicate_metadata",
            "duplicate_series"
        ]
    );
    assert_eq!(
        render(&e),
        "# HELP vllm:x First.\n# TYPE vllm:x gauge\nvllm:x{a=\"1\"} 1.0\n"
    );
}

#[test]
fn a_familys_samples_are_gathered_under_its_metadata() {
    let body = "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nother 5\nh_sum 2\nh_count 1\n";
    let e = all(body);
    assert_eq!(
        render(&e),
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1.0\nh_sum 2.0\nh_count 1.0\nother 5.0\n"
    );
    // A gauge's `_count` is a metric of its own.
    let e = all("# TYPE g gauge\ng 1\ng_count 2\n");
    assert_eq!(e.families.len(), 2);
}

#[test]
fn invalid_utf8_loses_its_line_only() {
    let mut body = b"vllm:ok 1\n".to_vec();
    body.extend_from_slice(b"vllm:x{a=\"\xff\"} 1\n");
    let e = Exposition::parse(&body, |_| true);
    assert_eq!(reasons(&e), vec!["invalid_utf8"]);
    assert_eq!(render(&e), "vllm:ok 1.0\n");
}

#[test]
fn problems_are_recorded_only_for_relevant_names() {
    let e = Exposition::parse(b"python_x{ 1\nvllm:y{ 2\n", |n| n.starts_with("vllm:"));
    assert_eq!(e.problems, vec![(Problem::Malformed, "vllm:y".to_owned())]);
}

#[test]
fn comments_blank_lines_and_crlf_are_fine() {
    let e = all("# just a comment\n\n  # EOF\r\nvllm:x 1\r\n");
    assert!(e.problems.is_empty(), "{:?}", e.problems);
    assert_eq!(render(&e), "vllm:x 1.0\n");
}

#[test]
fn the_catalog_names_every_problem() {
    let reasons: Vec<&str> = Problem::ALL.iter().map(|p| p.reason()).collect();
    assert_eq!(reasons, crate::catalog::agent::EXPOSITION_PROBLEMS);
}

#[test]
fn a_series_is_found_by_its_labels_in_any_order() {
    let e = all("x{a=\"1\",b=\"2\"} 1\nx{a=\"1\"} 2\ny 3\n");
    let found = e.find("x", [("b", "2"), ("a", "1")].into_iter()).unwrap();
    assert_eq!(found.value, 1.0);
    assert_eq!(e.find("x", [("a", "1")].into_iter()).unwrap().value, 2.0);
    assert_eq!(e.find("y", std::iter::empty()).unwrap().value, 3.0);
    assert!(e.find("x", [("a", "2")].into_iter()).is_none());
    assert!(e.find("x", std::iter::empty()).is_none());
}

#[test]
fn samples_render_with_extra_labels_after_their_own() {
    let e = all("x{a=\"q\\\"\"} 1\ny 2\n");
    let mut out = String::new();
    e.families[0].samples[0].render(&mut out, &[("z", "new")]);
    e.families[1].samples[0].render(&mut out, &[("z", "n\"ew")]);
    assert_eq!(out, "x{a=\"q\\\"\",z=\"new\"} 1.0\ny{z=\"n\\\"ew\"} 2.0\n");
}
