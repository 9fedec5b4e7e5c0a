//! vLLM's result block and JSON.

use std::fmt::Write;

use serde_json::{json, Value};

use super::BenchServeArgs;

#[derive(Debug, Clone, Default)]
pub(crate) struct RequestResult {
    pub success: bool,
    pub error: Option<String>,
    pub prompt_len: usize,
    pub output_len: usize,
    pub ttft: Option<f64>,
    pub itl: Vec<f64>,
    pub latency: f64,
}

pub(super) struct Summary {
    pub rows: Vec<(String, String)>,
    pub sections: Vec<(&'static str, &'static str, Vec<f64>)>,
    pub json: Value,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // numpy's default (linear interpolation), as vLLM uses.
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

pub(super) fn summarize(
    results: &[RequestResult],
    duration: f64,
    args: &BenchServeArgs,
    percentiles: &[f64],
) -> Summary {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.success).collect();
    let input: usize = ok.iter().map(|r| r.prompt_len).sum();
    let output: usize = ok.iter().map(|r| r.output_len).sum();
    let ms = |v: f64| v * 1000.0;
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft).map(ms).collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_len > 1)
        .filter_map(|r| {
            r.ttft
                .map(|t| ms((r.latency - t) / (r.output_len - 1) as f64))
        })
        .collect();
    let itl: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.itl.iter().copied().map(ms))
        .collect();
    let e2el: Vec<f64> = ok.iter().map(|r| ms(r.latency)).collect();
    let mut rows = vec![
        ("Successful requests:".to_owned(), ok.len().to_string()),
        (
            "Failed requests:".to_owned(),
            (results.len() - ok.len()).to_string(),
        ),
    ];
    if let Some(c) = args.max_concurrency {
        rows.push(("Maximum request concurrency:".into(), c.to_string()));
    }
    if args.request_rate.is_finite() {
        rows.push((
            "Request rate configured (RPS):".into(),
            format!("{:.2}", args.request_rate),
        ));
    }
    rows.push(("Benchmark duration (s):".into(), format!("{duration:.2}")));
    rows.push(("Total input tokens:".into(), input.to_string()));
    rows.push(("Total generated tokens:".into(), output.to_string()));
    rows.push((
        "Request throughput (req/s):".into(),
        format!("{:.2}", ok.len() as f64 / duration),
    ));
    rows.push((
        "Output token throughput (tok/s):".into(),
        format!("{:.2}", output as f64 / duration),
    ));
    rows.push((
        "Total token throughput (tok/s):".into(),
        format!("{:.2}", (input + output) as f64 / duration),
    ));
    let sections = vec![
        ("ttft", "Time to First Token", ttft),
        ("tpot", "Time per Output Token (excl. 1st token)", tpot),
        ("itl", "Inter-token Latency", itl),
        ("e2el", "End-to-end Latency", e2el),
    ];
    let mut json = json!({
        "duration": duration, "completed": ok.len(), "failed": results.len() - ok.len(),
        "total_input_tokens": input, "total_output_tokens": output,
        "request_throughput": ok.len() as f64 / duration, "output_throughput": output as f64 / duration,
        "total_token_throughput": (input + output) as f64 / duration,
        "request_rate": if args.request_rate.is_finite() { json!(args.request_rate) } else { json!("inf") },
        "burstiness": args.burstiness, "max_concurrency": args.max_concurrency,
        "errors": results.iter().filter_map(|r| r.error.clone()).collect::<Vec<_>>(),
    });
    for (key, _, values) in &sections {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        json[format!("mean_{key}_ms")] = json!(mean);
        json[format!("median_{key}_ms")] = json!(percentile(&v, 50.0));
        for p in percentiles {
            json[format!("p{}_{key}_ms", fmt_p(*p))] = json!(percentile(&v, *p));
        }
    }
    Summary {
        rows,
        sections,
        json,
    }
}

fn fmt_p(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

pub(super) fn render(s: &Summary, percentiles: &[f64]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:=^50}", " Serving Benchmark Result ");
    for (k, v) in &s.rows {
        let _ = writeln!(out, "{k:<40} {v:<10}");
    }
    for (key, title, _) in &s.sections {
        let _ = writeln!(out, "{:-^50}", title);
        let upper = key.to_uppercase();
        let get = |name: String| s.json[name].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:<40} {:<10.2}",
            format!("Mean {upper} (ms):"),
            get(format!("mean_{key}_ms"))
        );
        let _ = writeln!(
            out,
            "{:<40} {:<10.2}",
            format!("Median {upper} (ms):"),
            get(format!("median_{key}_ms"))
        );
        for p in percentiles {
            let _ = writeln!(
                out,
                "{:<40} {:<10.2}",
                format!("P{} {upper} (ms):", fmt_p(*p)),
                get(format!("p{}_{key}_ms", fmt_p(*p)))
            );
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(50));
    out
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
