//! Escaping for the text formats.

/// A label value: backslash, double quote and newline are escaped (both formats).
pub(crate) fn write_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and newline are escaped; OpenMetrics also escapes double quotes.
pub fn write_help(out: &mut String, help: &str, escape_quotes: bool) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if escape_quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut s = String::new();
        write_label_value(&mut s, "a\"b\\c\nd");
        assert_eq!(s, r#"a\"b\\c\nd"#);
        let mut s = String::new();
        write_help(&mut s, "say \"hi\"\\\n", false);
        assert_eq!(s, "say \"hi\"\\\\\\n");
        let mut s = String::new();
        write_help(&mut s, "say \"hi\"", true);
        assert_eq!(s, "say \\\"hi\\\"");
    }
}
