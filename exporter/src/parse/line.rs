//! One line of the Prometheus text format, judged as Prometheus's own parser judges it.
//!
//! One line of the Prometheus text format (0.0.4), judged as Prometheus's own parser judges it:
//! a `# HELP`/`# TYPE` line, a comment, or a sample
//! `name[{label="value",...}] value [timestamp]`. Whatever Prometheus would refuse (and so fail
//! the whole scrape for) is a [`Problem`].

use std::borrow::Cow;

use super::{MetricType, Problem};

/// What one line holds.
#[derive(Debug, PartialEq)]
pub(super) enum Line<'a> {
    /// Blank, or a comment that is not metadata.
    Nothing,
    Help {
        name: &'a str,
        /// The docstring as written (its `\\` and `\n` escapes kept).
        text: &'a str,
    },
    Type {
        name: &'a str,
        kind: MetricType,
    },
    Sample(ParsedSample<'a>),
}

#[derive(Debug, PartialEq)]
pub(super) struct ParsedSample<'a> {
    pub name: &'a str,
    /// The label set as written (between the braces), checked.
    pub labels: LabelSet<'a>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
    /// An OpenMetrics exemplar (`# {...} value`) followed the value: not part of the text
    /// format, so it is left out.
    pub had_exemplar: bool,
}

/// The name a line is about (a sample's metric name, a metadata line's family), read leniently
/// so that a broken line can still be attributed to its family.
pub(super) fn subject(line: &str) -> &str {
    let line = line.trim_start_matches([' ', '\t']);
    if let Some(rest) = line.strip_prefix('#') {
        let mut words = rest.split_whitespace();
        return match words.next() {
            Some("HELP" | "TYPE") => words.next().unwrap_or(""),
            _ => "",
        };
    }
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    &line[..end]
}

/// Reads one line (without its newline).
pub(super) fn parse(line: &str) -> Result<Line<'_>, Problem> {
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() {
        return Ok(Line::Nothing);
    }
    if let Some(rest) = line.strip_prefix('#') {
        return metadata(rest);
    }
    sample(line).map(Line::Sample)
}

fn metadata(rest: &str) -> Result<Line<'_>, Problem> {
    let rest = rest.trim_start_matches([' ', '\t']);
    let (keyword, rest) = split_word(rest);
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(Line::Nothing);
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (name, rest) = split_word(rest);
    if !is_metric_name(name) {
        return Err(Problem::MalformedMetadata);
    }
    let rest = rest.strip_prefix([' ', '\t']).unwrap_or(rest);
    if keyword == "HELP" {
        // Prometheus's parser takes only `\\` and `\n` in a docstring.
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                return Err(Problem::MalformedMetadata);
            }
        }
        return Ok(Line::Help { name, text: rest });
    }
    let kind = match rest.trim_matches([' ', '\t']) {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        "summary" => MetricType::Summary,
        "untyped" => MetricType::Untyped,
        _ => return Err(Problem::UnknownType),
    };
    Ok(Line::Type { name, kind })
}

fn split_word(s: &str) -> (&str, &str) {
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    s.split_at(end)
}

fn sample(line: &str) -> Result<ParsedSample<'_>, Problem> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(Problem::Malformed);
    }
    let mut rest = line[name_end..].trim_start_matches([' ', '\t']);
    let mut labels = LabelSet("");
    if let Some(inside) = rest.strip_prefix('{') {
        let mut names = Vec::new();
        rest = label_set(inside, &mut |name| names.push(name))?;
        labels = LabelSet(&inside[..inside.len() - rest.len() - 1]);
        for (i, label) in names.iter().enumerate() {
            if names[..i].contains(label) {
                return Err(Problem::DuplicateLabel);
            }
            if *label == "__name__" {
                return Err(Problem::ReservedLabel);
            }
        }
    } else if name_end == line.len() || !line[name_end..].starts_with([' ', '\t']) {
        return Err(Problem::Malformed);
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (value_text, rest) = split_word(rest);
    if value_text.is_empty() || value_text.starts_with('#') {
        return Err(Problem::Malformed);
    }
    let value = value(value_text)?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let (timestamp_ms, rest) = if rest.is_empty() || rest.starts_with('#') {
        (None, rest)
    } else {
        let (ts, rest) = split_word(rest);
        let ts: i64 = ts.parse().map_err(|_| Problem::InvalidTimestamp)?;
        (Some(ts), rest.trim_start_matches([' ', '\t']))
    };
    let had_exemplar = rest.starts_with('#');
    if !rest.is_empty() && !had_exemplar {
        return Err(Problem::Malformed);
    }
    Ok(ParsedSample {
        name,
        labels,
        value,
        timestamp_ms,
        had_exemplar,
    })
}

/// A sample's labels as written between its braces, known to be well formed: read on demand,
/// so that a parsed exposition costs little more memory than its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LabelSet<'a>(&'a str);

impl<'a> LabelSet<'a> {
    /// Names and unescaped values, in the order written.
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter(self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// The labels of a [`LabelSet`], read as they are asked for.
#[derive(Clone)]
pub struct LabelIter<'a>(&'a str);

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        // Checked when the line was read: cannot fail.
        let (name, value, after) = label(rest).ok()?;
        let after = after.trim_start_matches([' ', '\t']);
        self.0 = after.strip_prefix(',').unwrap_or(after);
        Some((name, value))
    }
}

/// Reads one `name="value"`: its name, its value and what follows the closing quote.
fn label(s: &str) -> Result<(&str, Cow<'_, str>, &str), Problem> {
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let name = &s[..name_end];
    if !is_label_name(name) {
        return Err(Problem::Malformed);
    }
    let mut s = s[name_end..].trim_start_matches([' ', '\t']);
    s = s.strip_prefix('=').ok_or(Problem::Malformed)?;
    s = s.trim_start_matches([' ', '\t']);
    s = s.strip_prefix('"').ok_or(Problem::Malformed)?;
    let (value, after) = quoted(s)?;
    Ok((name, value, after))
}

/// Reads `label="value",...}`, handing each label's name to `each`; returns what follows the
/// `}`.
fn label_set<'a>(mut s: &'a str, each: &mut dyn FnMut(&'a str)) -> Result<&'a str, Problem> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let (name, _, after) = label(s)?;
        each(name);
        s = after.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(Problem::Malformed);
        }
    }
}

/// A label value after its opening quote: the value unescaped (`\\`, `\"`, `\n`; any other
/// escaped character stays as written, as Prometheus keeps it; borrowed when there is no
/// escape) and what follows its closing quote. No closing quote is malformed.
fn quoted(s: &str) -> Result<(Cow<'_, str>, &str), Problem> {
    let end = s.find(['"', '\\']).ok_or(Problem::Malformed)?;
    if s.as_bytes()[end] == b'"' {
        return Ok((Cow::Borrowed(&s[..end]), &s[end + 1..]));
    }
    let mut value = String::from(&s[..end]);
    let mut chars = s[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Cow::Owned(value), &s[end + i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => return Err(Problem::Malformed),
            },
            c => value.push(c),
        }
    }
    Err(Problem::Malformed)
}

/// A sample value as Go's `strconv.ParseFloat` reads it: decimal, `Inf`/`NaN` in any case;
/// a finite literal beyond f64's range (`1e400`) is an error there, not infinity.
pub(super) fn value(text: &str) -> Result<f64, Problem> {
    let v: f64 = text.parse().map_err(|_| Problem::InvalidValue)?;
    let word = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
    let special = word.starts_with("inf") || word == "nan";
    if (v.is_infinite() || v.is_nan()) && !special {
        return Err(Problem::InvalidValue);
    }
    // Go takes no sign before NaN.
    if word == "nan" && text.starts_with(['+', '-']) {
        return Err(Problem::InvalidValue);
    }
    Ok(v)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub(crate) fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
