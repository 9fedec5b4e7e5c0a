//! One reading of a `/metrics` endpoint: when it was taken and its samples, by name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exporter::Exposition;

/// A sample's labels, in the order the exposition gave them.
pub(super) type Labels = Vec<(String, String)>;

pub(super) struct Scrape {
    /// Seconds since the Unix epoch, when the response arrived.
    pub at: f64,
    /// The body as received (kept for `--save-scrapes`).
    pub body: String,
    samples: HashMap<String, Vec<(Labels, f64)>>,
    /// For a name and a list of label names, the samples of that name by their values of
    /// those labels: built on the first look-up of that kind, so that reading every engine's
    /// row of an endpoint with thousands of engines costs one pass over each family, not one
    /// per engine.
    index: RefCell<HashMap<(String, Vec<String>), Index>>,
}

/// Positions of a family's samples, by their values of some labels.
type Index = HashMap<Vec<String>, Vec<usize>>;

impl Scrape {
    /// Fetches `url`; an error says what went wrong (the endpoint may be away).
    pub(super) fn fetch(url: &str) -> Result<Scrape, String> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let body = agent
            .get(url)
            .call()
            .map_err(|e| format!("{url}: {e}"))?
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{url}: {e}"))?;
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Ok(Scrape::from_text(at, body))
    }

    pub(super) fn from_text(at: f64, body: String) -> Scrape {
        let mut samples: HashMap<String, Vec<(Labels, f64)>> = HashMap::new();
        let exposition = Exposition::parse(body.as_bytes(), |_| false);
        for family in &exposition.families {
            for s in &family.samples {
                let labels = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.into_owned()))
                    .collect();
                samples
                    .entry(s.name.to_owned())
                    .or_default()
                    .push((labels, s.value));
            }
        }
        Scrape {
            at,
            body,
            samples,
            index: RefCell::default(),
        }
    }

    /// Every sample of `name`.
    pub(super) fn all(&self, name: &str) -> &[(Labels, f64)] {
        self.samples.get(name).map_or(&[], |v| v.as_slice())
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.samples.contains_key(name)
    }

    /// The sample of `name` whose labels include every pair of `matching`.
    pub(super) fn value(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, matching).first().map(|(_, v)| *v)
    }

    /// Every sample of `name` whose labels include every pair of `matching`, in the order of
    /// the exposition.
    pub(super) fn matching(&self, name: &str, matching: &[(&str, &str)]) -> Vec<(&Labels, f64)> {
        let all = self.all(name);
        if matching.is_empty() {
            return all.iter().map(|(l, v)| (l, *v)).collect();
        }
        let keys: Vec<String> = matching.iter().map(|(k, _)| (*k).to_owned()).collect();
        let values: Vec<String> = matching.iter().map(|(_, v)| (*v).to_owned()).collect();
        let mut index = self.index.borrow_mut();
        let by_values = index
            .entry((name.to_owned(), keys))
            .or_insert_with_key(|(_, keys)| {
                let mut by_values: Index = HashMap::new();
                for (i, (labels, _)) in all.iter().enumerate() {
                    let values: Option<Vec<String>> = keys
                        .iter()
                        .map(|k| label(labels, k).map(str::to_owned))
                        .collect();
                    if let Some(values) = values {
                        by_values.entry(values).or_default().push(i);
                    }
                }
                by_values
            });
        by_values.get(&values).map_or(Vec::new(), |positions| {
            positions.iter().map(|&i| (&all[i].0, all[i].1)).collect()
        })
    }

    /// The cumulative buckets `(le, count)` of histogram `name` for the series `matching`.
    pub(super) fn buckets(&self, name: &str, matching: &[(&str, &str)]) -> Vec<(f64, f64)> {
        self.matching(&format!("{name}_bucket"), matching)
            .into_iter()
            .filter_map(|(labels, v)| {
                let le = label(labels, "le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect()
    }
}

pub(super) fn label<'a>(labels: &'a Labels, name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
