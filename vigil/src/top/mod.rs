//! `vigil top`: the node's serving health at a glance, from any vLLM-compatible `/metrics`
//! endpoint (a Vigil, a vLLM, several at once). Each window is two scrapes of every endpoint,
//! turned into what PromQL's `rate` and `histogram_quantile` would give ([`window`]), rows per
//! engine, GPU and thread role ([`snapshot`]), and the likeliest reason for slowness
//! ([`verdict`]).

mod scrape;
mod screen;
mod snapshot;
mod text;
mod verdict;
mod window;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::cli::TopArgs;
use scrape::Scrape;
use snapshot::Snapshot;

/// The unit's environment file, read for `VIGIL_PORT` when no `--url` is given.
const ENV_FILE: &str = "/etc/vigil/vigil.env";

/// The endpoints to read: `--url`s, else this node's Vigil (`VIGIL_PORT` from the environment,
/// then from the unit's environment file, then vLLM's 8000).
fn urls(args: &TopArgs) -> Vec<String> {
    if !args.url.is_empty() {
        return args
            .url
            .iter()
            .map(|u| {
                if u.contains("/metrics") {
                    u.clone()
                } else {
                    format!("{}/metrics", u.trim_end_matches('/'))
                }
            })
            .collect();
    }
    let from_file = || {
        std::fs::read_to_string(ENV_FILE).ok().and_then(|text| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("VIGIL_PORT="))
                .map(|v| v.trim_matches('"').to_owned())
                .next_back()
        })
    };
    let port = std::env::var("VIGIL_PORT")
        .ok()
        .or_else(from_file)
        .unwrap_or_else(|| "8000".into());
    vec![format!("http://127.0.0.1:{port}/metrics")]
}

/// One window over every endpoint: a scrape of each, `interval` apart. An endpoint that does
/// not answer is reported, not fatal.
fn window(urls: &[String], interval: Duration, save: Option<&PathBuf>) -> anyhow::Result<Snapshot> {
    let first: Vec<Result<Scrape, String>> = urls.iter().map(|u| Scrape::fetch(u)).collect();
    std::thread::sleep(interval);
    let mut snapshot = Snapshot::default();
    for (i, (url, before)) in urls.iter().zip(first).enumerate() {
        let after = Scrape::fetch(url);
        match (before, after) {
            (Ok(before), Ok(after)) => {
                if let Some(dir) = save {
                    save_scrapes(dir, i, &before, &after)?;
                }
                snapshot.add(url, &before, &after);
            }
            (Err(e), _) | (_, Err(e)) => snapshot
                .missing
                .push((url.clone(), format!("unreachable: {e}"))),
        }
    }
    if snapshot.seconds == 0.0 {
        snapshot.seconds = interval.as_secs_f64();
    }
    Ok(snapshot)
}

/// Writes endpoint `i`'s two scrapes as `DIR/i-0.prom` and `DIR/i-1.prom`, each with the time
/// it was taken in `DIR/i-N.time` (seconds since the epoch).
fn save_scrapes(dir: &PathBuf, i: usize, before: &Scrape, after: &Scrape) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--save-scrapes {}", dir.display()))?;
    for (n, s) in [before, after].into_iter().enumerate() {
        std::fs::write(dir.join(format!("{i}-{n}.prom")), &s.body)?;
        std::fs::write(dir.join(format!("{i}-{n}.time")), s.at.to_string())?;
    }
    Ok(())
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let urls = urls(args);
    let interval = args.interval;
    if args.once {
        let snapshot = window(&urls, interval, args.save_scrapes.as_ref())?;
        print!("{}", text::render(&snapshot));
        return Ok(());
    }
    screen::run(urls, interval, args.save_scrapes.clone())
}
