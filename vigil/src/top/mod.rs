//! `vigil top`: a node's serving health at a glance, from any vLLM-compatible `/metrics`.
//!
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
    let env_file = std::fs::read_to_string(ENV_FILE).ok();
    vec![default_url(
        std::env::var("VIGIL_PORT").ok(),
        env_file.as_deref(),
    )]
}

/// This node's Vigil: the port from `VIGIL_PORT` in the environment, else from the unit's
/// environment file (its last uncommented `VIGIL_PORT=`), else vLLM's 8000.
fn default_url(env_port: Option<String>, env_file: Option<&str>) -> String {
    let from_file = || {
        env_file?
            .lines()
            .filter_map(|l| l.trim().strip_prefix("VIGIL_PORT="))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .next_back()
    };
    let port = env_port
        .filter(|p| !p.is_empty())
        .or_else(from_file)
        .unwrap_or_else(|| "8000".into());
    format!("http://127.0.0.1:{port}/metrics")
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

pub(crate) fn run(args: &TopArgs) -> anyhow::Result<()> {
    let urls = urls(args);
    let interval = args.interval;
    if args.once {
        let snapshot = window(&urls, interval, args.save_scrapes.as_ref())?;
        print!("{}", text::render(&snapshot));
        return Ok(());
    }
    screen::run(urls, interval, args.save_scrapes.clone())
}

#[cfg(test)]
mod tests {
    use super::default_url;

    #[test]
    fn the_default_endpoint_follows_the_environment_then_the_units_file() {
        let file = "# The port\n#VIGIL_PORT=8000\nVIGIL_PORT=9123\n";
        assert_eq!(
            default_url(Some("9200".into()), Some(file)),
            "http://127.0.0.1:9200/metrics"
        );
        assert_eq!(
            default_url(None, Some(file)),
            "http://127.0.0.1:9123/metrics"
        );
        assert_eq!(
            default_url(Some(String::new()), Some(file)),
            "http://127.0.0.1:9123/metrics"
        );
        assert_eq!(
            default_url(None, Some("#VIGIL_PORT=1\n")),
            "http://127.0.0.1:8000/metrics"
        );
        assert_eq!(default_url(None, None), "http://127.0.0.1:8000/metrics");
    }
}
