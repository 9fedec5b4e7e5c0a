//! "Why is it slow?": the likeliest culprit of a window, checked from the hardware up.
//!
//! "Why is it slow?": the likeliest culprit of the window, from the signals the dashboard's
//! first row shows, checked from the hardware up (a lost GPU or one whose XID needs a reset
//! first, then a throttled GPU or a starved engine thread, which make every other number
//! worse), with the numbers behind it.

use super::snapshot::Snapshot;

/// Run-queue latency (p99) of the engine thread beyond which its steps wait on the CPU.
const STARVED_ENGINE_S: f64 = 0.001;
/// KV cache usage beyond which admission stalls and preemption follows.
const KV_PRESSURE: f64 = 0.9;

pub(super) fn why_slow(s: &Snapshot) -> String {
    // A GPU lost, then one broken: nothing it ran is being served.
    let xids = |g: &super::snapshot::GpuRow| {
        g.fatal_xids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(g) = s.gpus.iter().find(|g| !g.up) {
        let after = if g.fatal_xids.is_empty() {
            String::new()
        } else {
            format!(" after XID {}", xids(g))
        };
        return format!("GPU {} is lost: the probe cannot read it{after}", g.gpu);
    }
    if let Some(g) = s.gpus.iter().find(|g| !g.fatal_xids.is_empty()) {
        return format!("GPU {} reported XID {}: it needs a reset", g.gpu, xids(g));
    }
    for g in &s.gpus {
        if !g.throttled_by.is_empty() {
            return format!(
                "GPU {} is throttled ({}) at {:.0} W, {:.0} °C",
                g.gpu,
                g.throttled_by.join(", "),
                g.power_watts,
                g.temperature
            );
        }
    }
    for g in &s.gpus {
        if g.xid_errors > 0.0 || g.ecc_errors > 0.0 {
            return format!(
                "GPU {} reports errors: {} XID, {} ECC in the window",
                g.gpu, g.xid_errors, g.ecc_errors
            );
        }
    }
    for h in &s.host {
        if h.role == "engine" && h.runqueue_p99 > STARVED_ENGINE_S {
            return format!(
                "host CPU starvation: the engine thread waits {:.1} ms (p99) for a CPU, {:.0} \
                 involuntary switches/s",
                h.runqueue_p99 * 1e3,
                h.involuntary_switches_per_s
            );
        }
    }
    for e in &s.engines {
        if e.preemptions_per_s > 0.0 || e.kv_cache_usage > KV_PRESSURE {
            return format!(
                "KV cache pressure on {}: {:.0}% used, {:.2} preemptions/s",
                e.model_name,
                e.kv_cache_usage * 100.0,
                e.preemptions_per_s
            );
        }
    }
    // Requests waiting for a CPU thread before the engine sees them (tokenization behind a
    // huge prompt, compiles behind a slow grammar): no vllm: gauge counts them.
    if let Some(p) = s.pools.iter().find(|p| p.waiting > 0.0) {
        return format!(
            "queueing before the engine: {} requests wait for a {} thread ({} running)",
            p.waiting, p.pool, p.running
        );
    }
    for e in &s.engines {
        if e.waiting > 0.0 {
            return format!(
                "queueing on {}: {} waiting behind {} running, queue time p99 {}",
                e.model_name,
                e.waiting,
                e.running,
                seconds(e.queue.1)
            );
        }
    }
    for f in &s.frontends {
        if f.queued > 0.0 {
            return format!(
                "queueing at the frontend for {}: {} queued, {} in flight",
                f.model, f.queued, f.inflight
            );
        }
    }
    if s.engines.is_empty() && s.frontends.is_empty() {
        return "no engine series: nothing to judge".into();
    }
    "nothing stands out: no queue, no KV pressure, no CPU starvation, no GPU throttling".into()
}

/// Seconds as ms, or `-` where the window had no observations.
pub(super) fn seconds(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.1} ms", v * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::{EngineRow, GpuRow, HostRow};
    use super::*;

    fn engine(waiting: f64, kv: f64, preemptions: f64) -> EngineRow {
        EngineRow {
            url: "u".into(),
            model_name: "m".into(),
            engine: "0".into(),
            running: 4.0,
            waiting,
            waiting_by_reason: vec![],
            kv_cache_usage: kv,
            prefix_cache_hit_rate: f64::NAN,
            preemptions_per_s: preemptions,
            prompt_tokens_per_s: 0.0,
            generation_tokens_per_s: 0.0,
            ttft: (f64::NAN, f64::NAN),
            itl: (f64::NAN, f64::NAN),
            e2e: (f64::NAN, f64::NAN),
            queue: (0.2, 0.5),
        }
    }

    #[test]
    fn the_hardware_is_named_before_what_it_causes() {
        let mut s = Snapshot {
            engines: vec![engine(3.0, 0.95, 1.5)],
            ..Default::default()
        };
        assert!(why_slow(&s).starts_with("KV cache pressure on m: 95% used, 1.50 preemptions/s"));
        s.engines[0] = engine(3.0, 0.5, 0.0);
        assert!(
            why_slow(&s).starts_with("queueing on m: 3 waiting behind 4 running"),
            "{}",
            why_slow(&s)
        );
        s.host.push(HostRow {
            url: "u".into(),
            role: "engine".into(),
            runqueue_p99: 0.004,
            involuntary_switches_per_s: 120.0,
        });
        assert!(why_slow(&s).starts_with("host CPU starvation: the engine thread waits 4.0 ms"));
        s.gpus.push(GpuRow {
            url: "u".into(),
            gpu: "0".into(),
            model: "H100".into(),
            utilization: 1.0,
            memory_used: 0.0,
            memory_total: 0.0,
            power_watts: 700.0,
            temperature: 91.0,
            throttled_by: vec!["hw_thermal_slowdown".into()],
            xid_errors: 0.0,
            ecc_errors: 0.0,
            up: true,
            fatal_xids: Vec::new(),
        });
        assert!(why_slow(&s).starts_with("GPU 0 is throttled (hw_thermal_slowdown)"));
        // An erroring GPU listed first does not hide a throttled one.
        let mut erroring = s.gpus[0].clone();
        (erroring.gpu, erroring.throttled_by, erroring.xid_errors) = ("7".into(), vec![], 1.0);
        s.gpus.insert(0, erroring);
        assert!(
            why_slow(&s).starts_with("GPU 0 is throttled"),
            "{}",
            why_slow(&s)
        );
        s.gpus.pop();
        assert!(
            why_slow(&s).starts_with("GPU 7 reports errors: 1 XID, 0 ECC"),
            "{}",
            why_slow(&s)
        );
        // A lost GPU, then one whose XID needs a reset, is named before a throttled one,
        // wherever it is listed.
        let mut throttled = s.gpus[0].clone();
        (throttled.gpu, throttled.throttled_by) = ("0".into(), vec!["hw_slowdown".into()]);
        let mut broken = s.gpus[0].clone();
        (broken.gpu, broken.fatal_xids) = ("4".into(), vec![48, 95]);
        let mut lost = s.gpus[0].clone();
        (lost.gpu, lost.up, lost.fatal_xids) = ("3".into(), false, vec![79]);
        s.gpus = vec![throttled.clone(), broken.clone()];
        assert_eq!(why_slow(&s), "GPU 4 reported XID 48, 95: it needs a reset");
        s.gpus = vec![throttled, broken, lost];
        assert_eq!(
            why_slow(&s),
            "GPU 3 is lost: the probe cannot read it after XID 79"
        );
    }

    #[test]
    fn a_quiet_window_says_so() {
        let s = Snapshot {
            engines: vec![engine(0.0, 0.1, 0.0)],
            ..Default::default()
        };
        assert!(why_slow(&s).starts_with("nothing stands out"));
    }

    /// Requests stuck before the engine (waiting for a CPU thread) are in no vllm: gauge: the
    /// verdict names the pool they wait for, ahead of an engine queue that reads empty.
    #[test]
    fn requests_waiting_for_a_cpu_thread_are_named() {
        use super::super::snapshot::PoolRow;
        let pool = |pool: &str, waiting: f64| PoolRow {
            url: "u".into(),
            pool: pool.into(),
            waiting,
            running: 1.0,
            busy: f64::NAN,
        };
        let s = Snapshot {
            engines: vec![engine(0.0, 0.1, 0.0)],
            pools: vec![pool("request", 0.0), pool("grammar", 7.0)],
            ..Default::default()
        };
        assert_eq!(
            why_slow(&s),
            "queueing before the engine: 7 requests wait for a grammar thread (1 running)"
        );
    }
}
