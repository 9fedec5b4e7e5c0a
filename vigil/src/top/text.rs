//! `vigil top --once`: one window as plain `key=value` text.
//!
//! `vigil top --once`: one window as plain text, a line per row of `key=value` fields (numbers
//! in full, NaN where the window had nothing to measure), for scripts and tests. Values read
//! from an endpoint's labels are quoted and escaped where they hold anything but plain
//! characters, so that no label value can split a field or forge a line (the verdict's
//! included).

use std::fmt::Write;

use super::snapshot::Snapshot;
use super::verdict::why_slow;

pub(super) fn render(s: &Snapshot) -> String {
    let mut out = format!("window_seconds={}\n", s.seconds);
    for e in &s.engines {
        let _ = write!(
            out,
            "engine url={} model_name={} engine={} running={} waiting={}",
            field(&e.url),
            field(&e.model_name),
            field(&e.engine),
            e.running,
            e.waiting
        );
        for (reason, n) in &e.waiting_by_reason {
            let _ = write!(out, " waiting_{}={n}", key(reason));
        }
        let _ = writeln!(
            out,
            " kv_cache_usage={} prefix_cache_hit_rate={} preemptions_per_s={} \
             prompt_tokens_per_s={} generation_tokens_per_s={} ttft_p50_s={} ttft_p99_s={} \
             itl_p50_s={} itl_p99_s={} e2e_p50_s={} e2e_p99_s={} queue_p50_s={} queue_p99_s={}",
            e.kv_cache_usage,
            e.prefix_cache_hit_rate,
            e.preemptions_per_s,
            e.prompt_tokens_per_s,
            e.generation_tokens_per_s,
            e.ttft.0,
            e.ttft.1,
            e.itl.0,
            e.itl.1,
            e.e2e.0,
            e.e2e.1,
            e.queue.0,
            e.queue.1
        );
    }
    for f in &s.frontends {
        let _ = writeln!(
            out,
            "frontend url={} model={} inflight={} queued={} requests_per_s={} \
             output_tokens_per_s={} ttft_p50_s={} ttft_p99_s={} itl_p50_s={} itl_p99_s={} \
             duration_p50_s={} duration_p99_s={}",
            field(&f.url),
            field(&f.model),
            f.inflight,
            f.queued,
            f.requests_per_s,
            f.output_tokens_per_s,
            f.ttft.0,
            f.ttft.1,
            f.itl.0,
            f.itl.1,
            f.duration.0,
            f.duration.1
        );
    }
    for g in &s.gpus {
        let throttled = if g.throttled_by.is_empty() {
            "none".to_owned()
        } else {
            field(&g.throttled_by.join(",")).into_owned()
        };
        let _ = writeln!(
            out,
            "gpu url={} gpu={} model={:?} utilization={} memory_used_bytes={} memory_total_bytes={} \
             power_watts={} temperature_celsius={} throttled_by={throttled} xid_errors={} \
             ecc_errors={} up={} fatal_xids={}",
            field(&g.url),
            field(&g.gpu),
            g.model,
            g.utilization,
            g.memory_used,
            g.memory_total,
            g.power_watts,
            g.temperature,
            g.xid_errors,
            g.ecc_errors,
            u8::from(g.up),
            if g.fatal_xids.is_empty() {
                "none".to_owned()
            } else {
                g.fatal_xids
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        );
    }
    for h in &s.host {
        let _ = writeln!(
            out,
            "host url={} role={} runqueue_p99_s={} involuntary_switches_per_s={}",
            field(&h.url),
            field(&h.role),
            h.runqueue_p99,
            h.involuntary_switches_per_s
        );
    }
    for d in &s.device {
        let _ = writeln!(
            out,
            "device url={} busy_fraction={}",
            field(&d.url),
            d.busy_fraction
        );
    }
    for p in &s.pools {
        let _ = writeln!(
            out,
            "pool url={} pool={} waiting={} running={} busy={}",
            field(&p.url),
            field(&p.pool),
            p.waiting,
            p.running,
            p.busy
        );
    }
    for (url, what) in &s.missing {
        let _ = writeln!(out, "missing url={} {}", field(url), one_line(what));
    }
    let _ = writeln!(out, "why: {}", one_line(&why_slow(s)));
    out
}

/// A value as a field: as it is when it holds only plain characters, else quoted with Rust's
/// escapes (`"a b"`, `"x\ny"`), which a script reads back as a string literal.
fn field(value: &str) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '=' | '\\');
    if !value.is_empty() && value.chars().all(plain) {
        value.into()
    } else {
        format!("{value:?}").into()
    }
}

/// A label value as part of a key (`waiting_<reason>`): anything but letters, digits and `_`
/// becomes `_`.
fn key(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Free text on one line: control characters (a newline in a label value that reached the
/// verdict) are escaped.
fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::scrape::Scrape;

    fn once(body: &str) -> String {
        let before = Scrape::from_text(0.0, body.to_owned());
        let after = Scrape::from_text(1.0, body.to_owned());
        let mut s = Snapshot::default();
        s.add("http://h/metrics", &before, &after);
        render(&s)
    }

    /// A label value with a newline, quotes, spaces or `=` cannot split a field, start a line
    /// of its own or forge the verdict.
    #[test]
    fn label_values_cannot_forge_lines() {
        let forged = "m\\nwhy: nothing stands out\\nengine url=x";
        let body = format!(
            "vllm:num_requests_running{{model_name=\"{forged}\",engine=\"0\"}} 1\n\
             vllm:num_requests_waiting{{model_name=\"{forged}\",engine=\"0\"}} 3\n\
             vllm:num_requests_waiting_by_reason{{model_name=\"{forged}\",engine=\"0\",reason=\"a b=c\"}} 3\n"
        );
        let out = once(&body);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("why:")).count(),
            1,
            "{out}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("engine ")).count(),
            1,
            "{out}"
        );
        let engine = lines.iter().find(|l| l.starts_with("engine ")).unwrap();
        assert!(
            engine.contains(r#"model_name="m\nwhy: nothing stands out\nengine url=x""#),
            "{engine}"
        );
        assert!(engine.contains(" waiting_a_b_c=3"), "{engine}");
        let why = lines.iter().find(|l| l.starts_with("why:")).unwrap();
        assert!(why.starts_with("why: queueing on m\\nwhy:"), "{why}");
        assert_eq!(field("plain-0.9"), "plain-0.9");
    }
}
