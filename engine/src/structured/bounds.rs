//! Bounds on a constraint before it is compiled, checked on the request's own text.
//!
//! What a constraint may be before it is compiled: bounds checked on the request's own text, so
//! that no schema, grammar, expression or list of choices can overflow the compiler's stack or
//! hold a compile thread for long.
//!
//! The compiler (llguidance) follows a JSON schema's `$ref`s and a Lark grammar's rule
//! references by recursion: a chain of a few hundred of them overflowed a thread's 2 MiB stack
//! and aborted the process. The chain is measured here first, without recursion deeper than the
//! bound itself, and the compile runs on a thread whose stack holds many times the bound (see
//! [`COMPILE_STACK_BYTES`]). The size bounds keep one compile within about a second on one core
//! (a regular expression's repetitions are counted unrolled, as a regex engine's size limit
//! counts them).

use std::collections::HashMap;

use serde_json::Value;

use super::spec::{ConstraintError, ConstraintSpec};

/// The deepest nesting a schema or grammar may reach: each JSON object or array a schema nests,
/// each `$ref` it follows and each rule a grammar's rule refers to counts one level.
pub(crate) const MAX_NESTING: usize = 256;

/// The stack of a thread that compiles constraints: at about 4 KiB of the compiler's stack per
/// level, 64 MiB holds some 16,000 levels, 60 times `MAX_NESTING` (the pages are only mapped,
/// and used as touched).
pub const COMPILE_STACK_BYTES: usize = 64 << 20;

/// The most strings a `choice` constraint may list.
pub(crate) const MAX_CHOICES: usize = 4096;

/// The most bytes a `choice` constraint's strings may hold together.
pub(crate) const MAX_CHOICE_BYTES: usize = 256 << 10;

/// The most bytes a Lark grammar may hold.
pub(crate) const MAX_GRAMMAR_BYTES: usize = 256 << 10;

/// The most `patternProperties` a JSON schema may have, all its objects together: the
/// compiler's work grows much faster than their number (on the default model's vocabulary, 100
/// compile in 65 ms, 200 in 0.6 s, 400 in 12 s).
pub(crate) const MAX_PATTERN_PROPERTIES: usize = 128;

/// The largest a regular expression may be with its repetitions unrolled (`a{3}` counts 3,
/// `(ab){1000}` 2000; an unbounded repetition counts its body once), whether it is a `regex`
/// constraint, a schema's `pattern` or `patternProperties`, or a grammar's `/.../` token.
pub(crate) const MAX_REGEX_UNROLLED: u64 = 65_536;

/// Checks `spec` against the bounds; the error names the bound it exceeds.
pub(super) fn check(spec: &ConstraintSpec) -> Result<(), ConstraintError> {
    match spec {
        ConstraintSpec::JsonSchema(schema) => check_schema(schema),
        ConstraintSpec::JsonObject => Ok(()),
        ConstraintSpec::Regex(rx) => check_regex(rx),
        ConstraintSpec::Choice(choices) => {
            if choices.len() > MAX_CHOICES {
                return Err(ConstraintError(format!(
                    "{} choices: at most {MAX_CHOICES} are accepted",
                    choices.len()
                )));
            }
            let bytes: usize = choices.iter().map(String::len).sum();
            if bytes > MAX_CHOICE_BYTES {
                return Err(ConstraintError(format!(
                    "the choices hold {bytes} bytes: at most {MAX_CHOICE_BYTES} are accepted"
                )));
            }
            Ok(())
        }
        ConstraintSpec::Lark(grammar) => check_lark(grammar),
    }
}

fn too_deep() -> ConstraintError {
    ConstraintError(format!(
        "the schema or grammar nests deeper than {MAX_NESTING} levels (each nested object or array, each $ref followed and each rule referred to counts one)"
    ))
}

/// Checks a JSON schema's nesting, following its local `$ref`s, and its regular expressions.
fn check_schema(root: &Value) -> Result<(), ConstraintError> {
    let mut walk = SchemaWalk {
        root,
        heights: HashMap::new(),
        pattern_properties: 0,
    };
    walk.height(root, 0).map(|_| ())
}

/// The height of each `$ref` target already measured, or `None` while it is being measured (a
/// reference back to it is recursion, which the compiler unrolls lazily: it adds no level).
struct SchemaWalk<'a> {
    root: &'a Value,
    heights: HashMap<&'a str, Option<usize>>,
    /// `patternProperties` seen so far.
    pattern_properties: usize,
}

impl<'a> SchemaWalk<'a> {
    /// How many levels `value` nests, where `depth` levels lead to it; stops (with an error) as
    /// soon as the total passes [`MAX_NESTING`], so that it never recurses deeper than that.
    fn height(&mut self, value: &'a Value, depth: usize) -> Result<usize, ConstraintError> {
        if depth > MAX_NESTING {
            return Err(too_deep());
        }
        let children: Box<dyn Iterator<Item = &'a Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => {
                if let Some(Value::String(pattern)) = fields.get("pattern") {
                    check_regex(pattern)?;
                }
                if let Some(Value::Object(patterns)) = fields.get("patternProperties") {
                    self.pattern_properties += patterns.len();
                    if self.pattern_properties > MAX_PATTERN_PROPERTIES {
                        return Err(ConstraintError(format!(
                            "the schema has more than {MAX_PATTERN_PROPERTIES} patternProperties"
                        )));
                    }
                    for pattern in patterns.keys() {
                        check_regex(pattern)?;
                    }
                }
                Box::new(fields.values())
            }
            _ => return Ok(0),
        };
        let mut height = 0;
        for child in children {
            height = height.max(self.height(child, depth + 1)?);
        }
        if let Some(Value::String(reference)) = value.get("$ref") {
            height = height.max(self.reference_height(reference, depth)?);
        }
        Ok(height + 1)
    }

    /// The height of what a local reference (`#`, `#/$defs/x`) points to (the object holding
    /// the reference already counts the hop's level). Other references (remote, by anchor) are
    /// left to the compiler, which refuses them.
    fn reference_height(
        &mut self,
        reference: &'a str,
        depth: usize,
    ) -> Result<usize, ConstraintError> {
        let Some(pointer) = reference.strip_prefix('#') else {
            return Ok(0);
        };
        match self.heights.get(reference) {
            Some(Some(height)) => {
                if depth + height > MAX_NESTING {
                    return Err(too_deep());
                }
                return Ok(*height);
            }
            Some(None) => return Ok(0),
            None => {}
        }
        let Some(target) = self.root.pointer(&percent_decoded(pointer)) else {
            return Ok(0);
        };
        self.heights.insert(reference, None);
        let height = self.height(target, depth)?;
        self.heights.insert(reference, Some(height));
        Ok(height)
    }
}

/// A URI fragment's JSON pointer with its `%XX` escapes decoded (`#/$defs/a%20b`).
fn percent_decoded(pointer: &str) -> String {
    let bytes = pointer.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a regular expression's unrolled size (an invalid one is left to the compiler, whose
/// message says what is wrong with it).
fn check_regex(rx: &str) -> Result<(), ConstraintError> {
    if rx.len() as u64 > MAX_REGEX_UNROLLED {
        return Err(regex_too_large(rx.len() as u64));
    }
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .nest_limit(MAX_NESTING as u32)
        .build()
        .parse(rx)
    else {
        return Ok(());
    };
    let size = unrolled_size(&hir);
    if size > MAX_REGEX_UNROLLED {
        return Err(regex_too_large(size));
    }
    Ok(())
}

fn regex_too_large(size: u64) -> ConstraintError {
    ConstraintError(format!(
        "a regular expression is {size} units long with its repetitions unrolled: at most {MAX_REGEX_UNROLLED} are accepted"
    ))
}

/// The size of `hir` with every counted repetition written out (saturating; the parser's nest
/// limit bounds the recursion).
fn unrolled_size(hir: &regex_syntax::hir::Hir) -> u64 {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => 0,
        HirKind::Literal(literal) => literal.0.len() as u64,
        HirKind::Class(_) => 1,
        HirKind::Repetition(rep) => {
            let times = u64::from(rep.max.unwrap_or(rep.min).max(1));
            times.saturating_mul(unrolled_size(&rep.sub))
        }
        HirKind::Capture(capture) => unrolled_size(&capture.sub),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => parts
            .iter()
            .fold(0u64, |sum, part| sum.saturating_add(unrolled_size(part))),
    }
}

/// Checks a Lark grammar's size, the chain of its rule references, its `/.../` tokens and the
/// schemas its `%json` blocks embed.
fn check_lark(grammar: &str) -> Result<(), ConstraintError> {
    if grammar.len() > MAX_GRAMMAR_BYTES {
        return Err(ConstraintError(format!(
            "the grammar is {} bytes: at most {MAX_GRAMMAR_BYTES} are accepted",
            grammar.len()
        )));
    }
    let rules = lark_rules(grammar)?;
    let mut heights: HashMap<&str, Option<usize>> = HashMap::new();
    for name in rules.keys() {
        lark_height(&rules, name, 0, &mut heights)?;
    }
    Ok(())
}

/// The names each rule or token of a grammar refers to, by its name. A reading of Lark's
/// lexical syntax (comments, strings, `/regex/`s, `<special>` tokens and `%json {...}` blocks
/// skipped), enough to see which names follow which definitions; the compiler parses it for
/// real afterwards.
fn lark_rules(grammar: &str) -> Result<HashMap<&str, Vec<&str>>, ConstraintError> {
    let bytes = grammar.as_bytes();
    let mut rules: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut current: Option<&str> = None;
    let mut line_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => i = line_end(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = line_end(bytes, i),
            b'"' => i = quoted_end(bytes, i, b'"'),
            b'/' => {
                let end = quoted_end(bytes, i, b'/');
                check_regex(&grammar[i + 1..end.saturating_sub(1).max(i + 1)])?;
                i = end;
            }
            b'<' => {
                i = bytes[i..]
                    .iter()
                    .position(|c| *c == b'>' || c.is_ascii_whitespace())
                    .map_or(bytes.len(), |p| i + p + 1)
            }
            b'%' => {
                let word_end = i + 1 + word_len(&bytes[i + 1..]);
                let directive = &grammar[i + 1..word_end];
                i = word_end;
                if matches!(directive, "json" | "llguidance" | "regex") {
                    let rest = &grammar[i..];
                    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                    if let Some(Ok(value)) = values.next() {
                        if directive == "json" {
                            check_schema(&value)?;
                        }
                        i += values.byte_offset();
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'!' || c == b'?' => {
                let start = i + usize::from(c == b'!' || c == b'?');
                let end = start + word_len(&bytes[start..]);
                let name = grammar[start..end].trim_start_matches(['!', '?']);
                i = end.max(i + 1);
                if line_start && defines(bytes, end) {
                    current = Some(name);
                    rules.entry(name).or_default();
                } else if let Some(rule) = current {
                    rules.entry(rule).or_default().push(name);
                }
            }
            _ => i += 1,
        }
        line_start = false;
    }
    Ok(rules)
}

/// Whether the name ending at `end` is being defined: `:` follows it, after an optional
/// `{params}` and `.priority`.
fn defines(bytes: &[u8], mut end: usize) -> bool {
    let skip_spaces = |mut i: usize| {
        while bytes.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
            i += 1;
        }
        i
    };
    end = skip_spaces(end);
    if bytes.get(end) == Some(&b'{') {
        end = bytes[end..]
            .iter()
            .position(|c| *c == b'}')
            .map_or(bytes.len(), |p| end + p + 1);
        end = skip_spaces(end);
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        end = skip_spaces(end);
    }
    bytes.get(end) == Some(&b':') && bytes.get(end + 1) != Some(&b':')
}

fn word_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'))
        .unwrap_or(bytes.len())
}

fn line_end(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|c| *c == b'\n')
        .map_or(bytes.len(), |p| i + p)
}

/// The index past a `quote`-delimited literal starting at `i` (backslash escapes skipped).
fn quoted_end(bytes: &[u8], i: usize, quote: u8) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            c if c == quote => return j + 1,
            b'\n' => return j,
            _ => j += 1,
        }
    }
    bytes.len()
}

/// The height of rule `name`'s chain of references, stopping past [`MAX_NESTING`].
fn lark_height<'a>(
    rules: &HashMap<&'a str, Vec<&'a str>>,
    name: &'a str,
    depth: usize,
    heights: &mut HashMap<&'a str, Option<usize>>,
) -> Result<usize, ConstraintError> {
    match heights.get(name) {
        Some(Some(height)) if depth + height > MAX_NESTING => return Err(too_deep()),
        Some(Some(height)) => return Ok(*height),
        Some(None) => return Ok(0),
        None => {}
    }
    if depth > MAX_NESTING {
        return Err(too_deep());
    }
    let Some(refers_to) = rules.get(name) else {
        return Ok(0);
    };
    heights.insert(name, None);
    let mut height = 0;
    for next in refers_to {
        height = height.max(lark_height(rules, next, depth + 1, heights)?);
    }
    heights.insert(name, Some(height + 1));
    Ok(height + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `{"$defs": {"d0": {"$ref": "#/$defs/d1"}, ..., "dN": {"type": "string"}}, "$ref": "#/$defs/d0"}`
    pub(crate) fn ref_chain(n: usize) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..n {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert(format!("d{n}"), json!({"type": "string"}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }

    /// `start: r0` and `rK: rK+1` down to `rN: "x"`.
    pub(crate) fn rule_chain(n: usize) -> String {
        let mut grammar = String::from("start: r0\n");
        for i in 0..n {
            grammar.push_str(&format!("r{i}: r{}\n", i + 1));
        }
        grammar.push_str(&format!("r{n}: \"x\"\n"));
        grammar
    }

    #[test]
    fn a_long_chain_of_refs_is_refused_and_a_short_one_passes() {
        let err = check(&ConstraintSpec::JsonSchema(ref_chain(650))).unwrap_err();
        assert!(err.0.contains("256 levels"), "{err}");
        check(&ConstraintSpec::JsonSchema(ref_chain(100))).unwrap();
        // A recursive schema (a tree) is fine: its recursion costs nothing to compile.
        let tree = json!({"$defs": {"node": {"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"});
        check(&ConstraintSpec::JsonSchema(tree)).unwrap();
    }

    #[test]
    fn shared_definitions_are_measured_once() {
        // Each of `levels` definitions refers to the next twice: walked without memory this is
        // 2^levels visits. Three levels of nesting each (object, array, object).
        let diamonds = |levels: usize| {
            let mut defs = serde_json::Map::new();
            for i in 0..levels {
                let next = format!("#/$defs/d{}", i + 1);
                defs.insert(
                    format!("d{i}"),
                    json!({"anyOf": [{"$ref": next}, {"$ref": next}]}),
                );
            }
            defs.insert(format!("d{levels}"), json!({"type": "integer"}));
            ConstraintSpec::JsonSchema(json!({"$defs": defs, "$ref": "#/$defs/d0"}))
        };
        check(&diamonds(60)).unwrap();
        assert!(check(&diamonds(200)).is_err());
    }

    #[test]
    fn a_long_chain_of_rules_is_refused_and_a_short_one_passes() {
        let err = check(&ConstraintSpec::Lark(rule_chain(490))).unwrap_err();
        assert!(err.0.contains("256 levels"), "{err}");
        check(&ConstraintSpec::Lark(rule_chain(100))).unwrap();
        // Comments, strings and regexes that mention names refer to nothing.
        let grammar = "// r1: r2\nstart: a \"b c\" /d e/ # f\na: \"x\" | start\n";
        let rules = lark_rules(grammar).unwrap();
        assert_eq!(rules["start"], vec!["a"]);
        assert_eq!(rules["a"], vec!["start"]);
        check(&ConstraintSpec::Lark(grammar.into())).unwrap();
    }

    #[test]
    fn schemas_embedded_in_a_grammar_are_checked() {
        let grammar = format!("start: %json {}\n", ref_chain(650));
        assert!(check(&ConstraintSpec::Lark(grammar)).is_err());
        let grammar = format!("start: %json {}\n", ref_chain(10));
        check(&ConstraintSpec::Lark(grammar)).unwrap();
    }

    #[test]
    fn regexes_are_measured_unrolled() {
        for rx in ["(a{1000}){1000}", "[0-9]{70000}"] {
            let err = check(&ConstraintSpec::Regex(rx.into())).unwrap_err();
            assert!(err.0.contains("unrolled"), "{rx}: {err}");
        }
        let literal = "a".repeat(4 << 20);
        assert!(check(&ConstraintSpec::Regex(literal)).is_err());
        for rx in [
            "[0-9]{3}-[0-9]{4}",
            "(yes|no)+",
            r"\w+@\w+\.com",
            ".{0,1000}",
        ] {
            check(&ConstraintSpec::Regex(rx.into())).unwrap();
        }
        let schema = json!({"type": "string", "pattern": "(a{1000}){1000}"});
        assert!(check(&ConstraintSpec::JsonSchema(schema)).is_err());
        let schema = json!({"type": "object", "patternProperties": {"(a{1000}){1000}": {}}});
        assert!(check(&ConstraintSpec::JsonSchema(schema)).is_err());
        assert!(check(&ConstraintSpec::Lark("start: /(a{1000}){1000}/".into())).is_err());
    }

    #[test]
    fn pattern_properties_are_bounded_in_number() {
        let patterns = |n: usize| -> serde_json::Map<String, Value> {
            (0..n)
                .map(|i| (format!("^k{i}[a-z]+$"), json!({"type": "integer"})))
                .collect()
        };
        let schema = json!({"type": "object", "patternProperties": patterns(400)});
        let err = check(&ConstraintSpec::JsonSchema(schema)).unwrap_err();
        assert!(err.0.contains("patternProperties"), "{err}");
        // Counted across the schema's objects.
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "object", "patternProperties": patterns(100)},
            "b": {"type": "object", "patternProperties": patterns(100)}}});
        assert!(check(&ConstraintSpec::JsonSchema(schema)).is_err());
        let schema = json!({"type": "object", "patternProperties": patterns(128)});
        check(&ConstraintSpec::JsonSchema(schema)).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A chain of `$ref`s or Lark rules of any length, compiled as the server compiles it
        /// (on a thread with the compile stack): within the bound it compiles, past it it is
        /// refused, and never does the compiler's recursion take the process down.
        #[test]
        fn a_chain_of_any_length_compiles_or_is_refused(length in 0usize..1500, lark: bool) {
            let spec = if lark {
                ConstraintSpec::Lark(rule_chain(length))
            } else {
                ConstraintSpec::JsonSchema(ref_chain(length))
            };
            let compiled = std::thread::Builder::new()
                .stack_size(COMPILE_STACK_BYTES)
                .spawn(move || {
                    let mut tokenizer = model::testing::byte_tokenizer();
                    tokenizer.eos_token_ids = vec![0];
                    let grammars = crate::structured::Grammars::new(
                        std::sync::Arc::new(tokenizer),
                        256,
                        Default::default(),
                    )
                    .unwrap();
                    grammars.compile(&spec).map(|_| ())
                })
                .unwrap()
                .join()
                .unwrap();
            match compiled {
                Ok(()) => proptest::prop_assert!(length <= MAX_NESTING, "{length} compiled"),
                Err(e) => {
                    proptest::prop_assert!(length + 4 > MAX_NESTING, "{length}: {e}");
                    proptest::prop_assert!(e.0.contains("levels"), "{e}");
                }
            }
        }
    }

    #[test]
    fn choices_are_bounded_in_count_and_bytes() {
        let many: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        assert!(check(&ConstraintSpec::Choice(many)).is_err());
        let long = vec!["x".repeat(MAX_CHOICE_BYTES + 1)];
        assert!(check(&ConstraintSpec::Choice(long)).is_err());
        let few: Vec<String> = (0..MAX_CHOICES).map(|i| i.to_string()).collect();
        check(&ConstraintSpec::Choice(few)).unwrap();
    }
}
