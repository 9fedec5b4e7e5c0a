//! `vigil top --once`: one window as plain text, a line per row of `key=value` fields (numbers
//! in full, NaN where the window had nothing to measure), for scripts and tests.

use std::fmt::Write;

use super::snapshot::Snapshot;
use super::verdict::why_slow;

pub fn render(s: &Snapshot) -> String {
    let mut out = format!("window_seconds={}\n", s.seconds);
    for e in &s.engines {
        let _ = write!(
            out,
            "engine url={} model_name={} engine={} running={} waiting={}",
            e.url, e.model_name, e.engine, e.running, e.waiting
        );
        for (reason, n) in &e.waiting_by_reason {
            let _ = write!(out, " waiting_{reason}={n}");
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
            f.url,
            f.model,
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
            g.throttled_by.join(",")
        };
        let _ = writeln!(
            out,
            "gpu url={} gpu={} model={:?} utilization={} memory_used_bytes={} memory_total_bytes={} \
             power_watts={} temperature_celsius={} throttled_by={throttled} xid_errors={} \
             ecc_errors={} up={} fatal_xids={}",
            g.url,
            g.gpu,
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
            h.url, h.role, h.runqueue_p99, h.involuntary_switches_per_s
        );
    }
    for d in &s.device {
        let _ = writeln!(
            out,
            "device url={} busy_fraction={}",
            d.url, d.busy_fraction
        );
    }
    for (url, what) in &s.missing {
        let _ = writeln!(out, "missing url={url} {what}");
    }
    let _ = writeln!(out, "why: {}", why_slow(s));
    out
}
