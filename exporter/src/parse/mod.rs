//! A lenient reader of Prometheus text expositions that names what it leaves out.
//!
//! Reading another exporter's Prometheus text exposition (format 0.0.4) line by line, as a
//! Prometheus server would, but keeping what is valid where Prometheus fails the whole scrape:
//! a line Prometheus would refuse is left out and named by a [`Problem`], the rest is assembled
//! into families, which [`Exposition::render`] writes back as one valid exposition (each family
//! once, its metadata first, its samples together, no series twice).
//!
//! Why not a crate: the parsers on crates.io accept or refuse a whole body, and accept values
//! Prometheus refuses (`1e400`); the node agent needs a verdict per line, by Prometheus's rules.

mod line;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

pub(crate) use line::LabelSet;

use crate::render::escape::write_label_value;

/// Why part of an exposition was left out: a closed set, a label value of a bounded series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    /// The line is not UTF-8.
    InvalidUtf8,
    /// A sample line that does not follow the grammar (a broken label set, a label value cut
    /// by a raw newline, no value).
    Malformed,
    /// A `# HELP`/`# TYPE` line without a valid metric name, or a HELP with an escape other
    /// than `\\` and `\n`.
    MalformedMetadata,
    /// A `# TYPE` other than counter, gauge, histogram, summary, untyped (OpenMetrics' types
    /// in a text scrape): the line is dropped and the family's samples stay, untyped.
    UnknownType,
    /// A value Go's `ParseFloat` refuses (not a number, or out of range like `1e400`), or
    /// such a histogram bucket's `le` or summary quantile's `quantile`.
    InvalidValue,
    /// A timestamp that is not a 64-bit integer of milliseconds.
    InvalidTimestamp,
    /// The same label twice in one sample.
    DuplicateLabel,
    /// A sample with a `__name__` label, which Prometheus's parser refuses ("label name
    /// `__name__` is reserved"), failing the whole scrape.
    ReservedLabel,
    /// A second `# HELP` or `# TYPE` for a family.
    DuplicateMetadata,
    /// A sample whose name and labels repeat an earlier one's.
    DuplicateSeries,
    /// An OpenMetrics exemplar after a sample (not part of the text format): the exemplar is
    /// dropped, the sample kept.
    Exemplar,
}

impl Problem {
    pub const ALL: [Problem; 11] = [
        Problem::InvalidUtf8,
        Problem::Malformed,
        Problem::MalformedMetadata,
        Problem::UnknownType,
        Problem::InvalidValue,
        Problem::InvalidTimestamp,
        Problem::DuplicateLabel,
        Problem::ReservedLabel,
        Problem::DuplicateMetadata,
        Problem::DuplicateSeries,
        Problem::Exemplar,
    ];

    /// Its name as a label value.
    pub fn reason(self) -> &'static str {
        match self {
            Problem::InvalidUtf8 => "invalid_utf8",
            Problem::Malformed => "malformed_sample",
            Problem::MalformedMetadata => "malformed_metadata",
            Problem::UnknownType => "unknown_type",
            Problem::InvalidValue => "invalid_value",
            Problem::InvalidTimestamp => "invalid_timestamp",
            Problem::DuplicateLabel => "duplicate_label",
            Problem::ReservedLabel => "reserved_label",
            Problem::DuplicateMetadata => "duplicate_metadata",
            Problem::DuplicateSeries => "duplicate_series",
            Problem::Exemplar => "exemplar",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    /// The suffixes this type's samples add to the family name.
    fn sample_suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Histogram => &["_bucket", "_sum", "_count"],
            MetricType::Summary => &["_sum", "_count"],
            _ => &[],
        }
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The series name (with any `_bucket`, `_sum`, `_count` or `_total` suffix).
    pub name: &'a str,
    /// Its labels, as written.
    pub labels: LabelSet<'a>,
    /// Its value.
    pub value: f64,
    /// Its timestamp in milliseconds, if written.
    pub timestamp_ms: Option<i64>,
}

impl<'a> Sample<'a> {
    /// The value of label `name`, unescaped.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family<'a> {
    pub name: &'a str,
    /// The docstring as written (escaped).
    pub help: Option<&'a str>,
    pub kind: Option<MetricType>,
    pub samples: Vec<Sample<'a>>,
}

/// An exposition as far as it is valid, and what was left out of it. It borrows the text it
/// was read from and costs little more memory: the node agent reads expositions of megabytes.
#[derive(Debug, Default)]
pub struct Exposition<'a> {
    /// The families, in the order they appear.
    pub families: Vec<Family<'a>>,
    /// What was left out, with the family (or sample) name the line was about.
    pub problems: Vec<(Problem, String)>,
    /// Every series by the hash of its identity: where its sample is (family, sample).
    series: HashMap<u64, (u32, u32)>,
    /// Series whose hash another had already (rare).
    collisions: Vec<(u64, (u32, u32))>,
    /// The families named like a sample of a histogram or summary family, in order.
    suffixed: Vec<usize>,
}

/// A series' identity: its name and its labels in name order.
pub fn series_hash<'s>(name: &str, labels: impl Iterator<Item = (&'s str, &'s str)>) -> u64 {
    let mut labels: Vec<(&str, &str)> = labels.collect();
    labels.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    labels.hash(&mut h);
    h.finish()
}

impl<'a> Exposition<'a> {
    /// Reads `body`. Every line is judged; families are kept whatever their names (callers
    /// filter), and a problem is recorded only for lines `relevant` says are about a name that
    /// matters (a broken line of a family the caller drops anyway is no news).
    pub fn parse(body: &'a [u8], relevant: impl Fn(&str) -> bool) -> Exposition<'a> {
        let mut out = Exposition::default();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        // Each line's span, without its newline and a carriage return before it.
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in body.iter().enumerate() {
            if *b == b'\n' {
                lines.push((start, i));
                start = i + 1;
            }
        }
        lines.push((start, body.len()));
        let span = |(s, e): (usize, usize)| {
            let line = &body[s..e];
            line.strip_suffix(b"\r").unwrap_or(line)
        };
        let mut next = 0;
        while next < lines.len() {
            let raw = span(lines[next]);
            let first = lines[next].0;
            next += 1;
            let Ok(mut text) = std::str::from_utf8(raw) else {
                let lossy = String::from_utf8_lossy(raw);
                let subject = line::subject(&lossy);
                if relevant(subject) {
                    out.problems
                        .push((Problem::InvalidUtf8, subject.to_owned()));
                }
                continue;
            };
            if let Some(used) = continued(text, lines[next..].iter().map(|l| span(*l))) {
                let last = next + used - 1;
                let whole = &body[first..lines[last].0 + span(lines[last]).len()];
                // Checked in `continued`.
                text = std::str::from_utf8(whole).unwrap_or(text);
                next += used;
            }
            let problem = match line::parse(text) {
                Ok(line::Line::Nothing) => None,
                Ok(line::Line::Help { name, text }) => {
                    let family = out.family_mut(&mut index, name);
                    if family.help.is_some() {
                        Some(Problem::DuplicateMetadata)
                    } else {
                        family.help = Some(text);
                        None
                    }
                }
                Ok(line::Line::Type { name, kind }) => {
                    let family = out.family_mut(&mut index, name);
                    if family.kind.is_some() {
                        Some(Problem::DuplicateMetadata)
                    } else {
                        family.kind = Some(kind);
                        None
                    }
                }
                Ok(line::Line::Sample(parsed)) => {
                    let sample = Sample {
                        name: parsed.name,
                        labels: parsed.labels,
                        value: parsed.value,
                        timestamp_ms: parsed.timestamp_ms,
                    };
                    let labels: Vec<_> = sample.labels.iter().collect();
                    let labels = || labels.iter().map(|(n, v)| (*n, v.as_ref()));
                    let hash = series_hash(sample.name, labels());
                    if out.find_hashed(hash, sample.name, labels()).is_some() {
                        Some(Problem::DuplicateSeries)
                    } else {
                        let f = out.family_of_sample(&mut index, parsed.name);
                        if !out.families[f].bound_is_a_number(&sample) {
                            Some(Problem::InvalidValue)
                        } else {
                            let at = (f as u32, out.families[f].samples.len() as u32);
                            out.families[f].samples.push(sample);
                            if let Some(other) = out.series.insert(hash, at) {
                                // Keep both: `find` compares the samples themselves.
                                out.collisions.push((hash, other));
                            }
                            parsed.had_exemplar.then_some(Problem::Exemplar)
                        }
                    }
                }
                Err(problem) => Some(problem),
            };
            if let Some(problem) = problem {
                let subject = line::subject(text);
                if relevant(subject) {
                    out.problems.push((problem, subject.to_owned()));
                }
            }
        }
        out.join_suffixed_families(&index, &relevant);
        out
    }

    /// Moves the samples of a family named like a sample of a histogram or summary (`x_count`
    /// beside summary `x`: the engine wrote metadata for it, or its samples came before the
    /// summary's TYPE) into that family, which is what Prometheus's parser takes them for; the
    /// suffixed family keeps its metadata only, for the renderer to leave out. A moved sample
    /// whose bound is not a number is left out as such samples are.
    fn join_suffixed_families(
        &mut self,
        index: &HashMap<&'a str, usize>,
        relevant: &impl Fn(&str) -> bool,
    ) {
        let mut moved = false;
        for child in 0..self.families.len() {
            let Some(base) = base_family(&self.families, index, self.families[child].name) else {
                continue;
            };
            self.suffixed.push(child);
            for sample in std::mem::take(&mut self.families[child].samples) {
                if self.families[base].bound_is_a_number(&sample) {
                    self.families[base].samples.push(sample);
                } else if relevant(sample.name) {
                    self.problems
                        .push((Problem::InvalidValue, sample.name.to_owned()));
                }
                moved = true;
            }
        }
        if moved {
            self.series.clear();
            self.collisions.clear();
            for (f, family) in self.families.iter().enumerate() {
                for (i, sample) in family.samples.iter().enumerate() {
                    let labels: Vec<_> = sample.labels.iter().collect();
                    let hash =
                        series_hash(sample.name, labels.iter().map(|(n, v)| (*n, v.as_ref())));
                    if let Some(other) = self.series.insert(hash, (f as u32, i as u32)) {
                        self.collisions.push((hash, other));
                    }
                }
            }
        }
    }

    /// Whether family `f` is named like a sample of a histogram or summary family of this
    /// exposition: its samples are that family's, and its own metadata is not to be written
    /// (Prometheus's parser refuses a second HELP or TYPE for that family).
    pub fn is_suffix_of_another(&self, f: usize) -> bool {
        self.suffixed.binary_search(&f).is_ok()
    }

    /// The sample of the series `name{labels}`, if the exposition has it.
    pub fn find<'s>(
        &self,
        name: &str,
        labels: impl Iterator<Item = (&'s str, &'s str)> + Clone,
    ) -> Option<&Sample<'a>> {
        self.find_hashed(series_hash(name, labels.clone()), name, labels)
    }

    /// [`Exposition::find`] with the series' hash already computed.
    fn find_hashed<'s>(
        &self,
        hash: u64,
        name: &str,
        labels: impl Iterator<Item = (&'s str, &'s str)>,
    ) -> Option<&Sample<'a>> {
        let mut wanted: Vec<(&str, &str)> = labels.collect();
        wanted.sort_unstable();
        let same = |&(f, i): &(u32, u32)| {
            let sample = &self.families[f as usize].samples[i as usize];
            let mut have: Vec<(&str, Cow<str>)> = sample.labels.iter().collect();
            have.sort_unstable();
            (sample.name == name
                && have.len() == wanted.len()
                && have
                    .iter()
                    .zip(&wanted)
                    .all(|((hn, hv), (wn, wv))| hn == wn && hv == wv))
            .then_some(sample)
        };
        self.series.get(&hash).and_then(same).or_else(|| {
            self.collisions
                .iter()
                .filter(|(h, _)| *h == hash)
                .find_map(|(_, at)| same(at))
        })
    }

    fn family_mut(
        &mut self,
        index: &mut HashMap<&'a str, usize>,
        name: &'a str,
    ) -> &mut Family<'a> {
        let i = *index.entry(name).or_insert_with(|| {
            self.families.push(Family {
                name,
                help: None,
                kind: None,
                samples: Vec::new(),
            });
            self.families.len() - 1
        });
        &mut self.families[i]
    }

    /// The family a sample named `name` belongs to: its own name's, or the histogram or
    /// summary whose sample suffix it carries, else a new untyped family of its own.
    fn family_of_sample(&mut self, index: &mut HashMap<&'a str, usize>, name: &'a str) -> usize {
        if let Some(&i) = index.get(name) {
            return i;
        }
        if let Some(i) = base_family(&self.families, index, name) {
            return i;
        }
        self.family_mut(index, name);
        index[name]
    }

    /// How many problems of each kind, in `Problem::ALL`'s order.
    pub fn problem_counts(&self) -> [(Problem, u64); 11] {
        Problem::ALL.map(|p| {
            (
                p,
                self.problems.iter().filter(|(q, _)| *q == p).count() as u64,
            )
        })
    }

    /// Whether any family has a sample.
    pub fn has_samples(&self) -> bool {
        self.families.iter().any(|f| !f.samples.is_empty())
    }
}

/// The histogram or summary family (of `families`, found by name in `index`) that a sample
/// named `name` belongs to by its suffix: `x` for `x_count` beside summary `x`.
fn base_family(families: &[Family<'_>], index: &HashMap<&str, usize>, name: &str) -> Option<usize> {
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let i = *index.get(name.strip_suffix(suffix)?)?;
        families[i]
            .kind
            .is_some_and(|k| k.sample_suffixes().contains(suffix))
            .then_some(i)
    })
}

/// How far a quoted label value may run over raw newlines.
const MAX_CONTINUATION_LINES: usize = 8;

/// A sample whose quoted label value holds raw newlines, which Prometheus's lexer accepts
/// inside quotes: how many of the lines `after` complete the line `text`. Only a line that is
/// broken alone and whole when joined is joined, so an unterminated quote costs its own line,
/// never the lines after it.
fn continued<'b>(text: &str, after: impl Iterator<Item = &'b [u8]>) -> Option<usize> {
    if text.trim_start().starts_with('#') || !text.contains('"') || line::parse(text).is_ok() {
        return None;
    }
    let mut whole = text.to_owned();
    for (used, next) in after.take(MAX_CONTINUATION_LINES).enumerate() {
        whole.push('\n');
        whole.push_str(std::str::from_utf8(next).ok()?);
        if matches!(line::parse(&whole), Ok(line::Line::Sample(_))) {
            return Some(used + 1);
        }
    }
    None
}

impl Family<'_> {
    /// Whether `sample`'s bound, where its family's type has one (a histogram's `le`, a
    /// summary's `quantile`, on whichever of its samples carries it), is a number as
    /// Prometheus's parser reads it: it refuses the whole scrape otherwise.
    fn bound_is_a_number(&self, sample: &Sample<'_>) -> bool {
        let bound = match self.kind {
            Some(MetricType::Histogram) => Some("le"),
            Some(MetricType::Summary) => Some("quantile"),
            _ => None,
        };
        bound
            .and_then(|label| sample.label(label))
            .is_none_or(|v| line::value(&v).is_ok())
    }

    /// Appends the family in the text format: HELP, TYPE, then its samples.
    pub fn render(&self, out: &mut String) {
        self.render_metadata(out);
        for sample in &self.samples {
            sample.render(out, &[]);
        }
    }

    /// Appends the family's HELP and TYPE lines.
    pub fn render_metadata(&self, out: &mut String) {
        if let Some(help) = self.help {
            out.push_str("# HELP ");
            out.push_str(self.name);
            out.push(' ');
            out.push_str(help);
            out.push('\n');
        }
        if let Some(kind) = self.kind {
            out.push_str("# TYPE ");
            out.push_str(self.name);
            out.push(' ');
            out.push_str(kind.as_str());
            out.push('\n');
        }
    }
}

impl Sample<'_> {
    /// Appends the sample line in the text format, with the labels `extra` after its own.
    pub fn render(&self, out: &mut String, extra: &[(&str, &str)]) {
        out.push_str(self.name);
        let mut first = true;
        for (name, value) in self
            .labels
            .iter()
            .chain(extra.iter().map(|(n, v)| (*n, Cow::Borrowed(*v))))
        {
            out.push(if first { '{' } else { ',' });
            first = false;
            out.push_str(name);
            out.push_str("=\"");
            write_label_value(out, &value);
            out.push('"');
        }
        if !first {
            out.push('}');
        }
        out.push(' ');
        crate::render::number::write_float(out, self.value);
        if let Some(ts) = self.timestamp_ms {
            out.push(' ');
            out.push_str(&ts.to_string());
        }
        out.push('\n');
    }
}
