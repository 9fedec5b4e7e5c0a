//! `vigil bench serve`: a load generator after `vllm bench serve`.
//!
//! It sends streaming completions at a Poisson (or gamma, `--burstiness`) rate, optionally capped
//! by `--max-concurrency`, measures TTFT, TPOT, ITL and end-to-end latency per request, and prints
//! vLLM's result block (and `--save-result` JSON).
//!
//! Requests run on plain threads with a blocking HTTP client (ureq, HTTP only): the client is
//! not what is being measured, and threads keep it simple.

mod dataset;
mod report;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) use report::RequestResult;

#[derive(Debug, Clone, Args)]
pub struct BenchServeArgs {
    /// Server base URL (default http://HOST:PORT).
    #[arg(long)]
    pub base_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// Model name to send (default: the server's first).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Requests per second ("inf": all at once).
    #[arg(long, default_value = "inf")]
    pub request_rate: f64,
    /// Gamma shape of inter-arrival times: 1 is Poisson, below 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// `random` or `sharegpt` (needs --dataset-path).
    #[arg(long, default_value = "random")]
    pub dataset_name: String,
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Percentiles to report, comma-separated.
    #[arg(long, default_value = "99")]
    pub metric_percentiles: String,
    #[arg(long)]
    pub save_result: bool,
    #[arg(long, default_value = ".")]
    pub result_dir: PathBuf,
    #[arg(long)]
    pub result_filename: Option<String>,
    #[arg(long)]
    pub disable_tqdm: bool,
}

pub(crate) fn run(args: BenchServeArgs) -> anyhow::Result<()> {
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        bail!("--request-rate must be positive or inf");
    }
    if !args.burstiness.is_finite() || args.burstiness <= 0.0 {
        bail!("--burstiness must be positive");
    }
    let base = args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    let url = format!("{}{}", base.trim_end_matches('/'), args.endpoint);
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&base)?,
    };
    let requests = dataset::build(&args, &base, &model)?;
    let percentiles: Vec<f64> = args
        .metric_percentiles
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .with_context(|| format!("--metric-percentiles: {p:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;

    let progress = if args.disable_tqdm {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(requests.len() as u64)
    };
    let slots = Arc::new((Mutex::new(0usize), Condvar::new()));
    let (tx, rx) = mpsc::channel();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let mut next_at = Duration::ZERO;
    for (i, body) in requests.into_iter().enumerate() {
        if args.request_rate.is_finite() {
            // Gamma(shape = burstiness, scale = 1 / (rate * burstiness)) inter-arrival times.
            next_at += Duration::from_secs_f64(
                gamma(&mut rng, args.burstiness) / (args.request_rate * args.burstiness),
            );
            let now = start.elapsed();
            if next_at > now {
                std::thread::sleep(next_at - now);
            }
        }
        if let Some(max) = args.max_concurrency {
            let (lock, cv) = &*slots;
            let mut busy = lock.lock().unwrap();
            while *busy >= max {
                busy = cv.wait(busy).unwrap();
            }
            *busy += 1;
        }
        let (tx, url, slots, progress) = (
            tx.clone(),
            url.clone(),
            Arc::clone(&slots),
            progress.clone(),
        );
        let limited = args.max_concurrency.is_some();
        std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || {
                let result = send(&url, &body);
                progress.inc(1);
                if limited {
                    let (lock, cv) = &*slots;
                    *lock.lock().unwrap() -= 1;
                    cv.notify_one();
                }
                let _ = tx.send(result);
            })?;
    }
    drop(tx);
    let results: Vec<RequestResult> = rx.iter().collect();
    progress.finish_and_clear();
    let duration = start.elapsed().as_secs_f64();
    let summary = report::summarize(&results, duration, &args, &percentiles);
    print!("{}", report::render(&summary, &percentiles));
    if args.save_result {
        let name = args
            .result_filename
            .clone()
            .unwrap_or_else(|| format!("vigil-bench-{}.json", server::unix_now()));
        let path = args.result_dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&summary.json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("saved {}", path.display());
    }
    Ok(())
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; shape < 1 boosted).
fn gamma(rng: &mut StdRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (x, v) = loop {
            // Standard normal by Box-Muller.
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
            let x = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let v = 1.0 + c * x;
            if v > 0.0 {
                break (x, v * v * v);
            }
        };
        let u: f64 = rng.random();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

fn first_model(base: &str) -> anyhow::Result<String> {
    let mut resp = ureq::get(&format!("{}/v1/models", base.trim_end_matches('/')))
        .call()
        .with_context(|| format!("asking {base}/v1/models for the model name"))?;
    let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .context("the server lists no model")
}

/// Sends one streaming request and times its tokens.
fn send(url: &str, body: &dataset::BenchRequest) -> RequestResult {
    let start = Instant::now();
    let mut result = RequestResult {
        prompt_len: body.prompt_len,
        ..Default::default()
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.json.as_bytes());
    let mut resp = match resp {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => {
            result.error = Some(format!("HTTP {}", r.status()));
            return result;
        }
        Err(e) => {
            result.error = Some(e.to_string());
            return result;
        }
    };
    let mut last = start;
    let reader = BufReader::new(resp.body_mut().as_reader());
    for line in reader.lines() {
        let Ok(line) = line else {
            result.error = Some("stream broke".into());
            return result;
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if v.get("error").is_some() {
            result.error = Some(v["error"]["message"].as_str().unwrap_or("error").to_owned());
            return result;
        }
        if let Some(usage) = v.get("usage").filter(|u| !u.is_null()) {
            result.output_len = usage["completion_tokens"].as_u64().unwrap_or(0) as usize;
            continue;
        }
        let text = v["choices"][0]["text"]
            .as_str()
            .or_else(|| v["choices"][0]["delta"]["content"].as_str())
            .unwrap_or("");
        if text.is_empty() {
            continue;
        }
        let now = Instant::now();
        if result.ttft.is_none() {
            result.ttft = Some((now - start).as_secs_f64());
        } else {
            result.itl.push((now - last).as_secs_f64());
        }
        last = now;
    }
    result.latency = (Instant::now() - start).as_secs_f64();
    result.success = true;
    result
}
