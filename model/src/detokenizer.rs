//! A request's output text, detokenized incrementally with stop strings, as vLLM does it.
//!
//! A request's output text, as vLLM's `IncrementalDetokenizer` (`vllm/v1/engine/detokenizer.py`)
//! makes it: generated tokens are detokenized as they arrive, stop strings are matched against
//! the text, and only text that no stop string can still claim is handed out.
//!
//! It runs on the engine thread, right after the token is sampled, so a stop string ends the
//! request before the next step: the request's token counts, its metrics and its finish event
//! all stop at the token that completed the stop string, as vLLM counts them.

use std::sync::Arc;

use crate::tokenizer::{DecodeStream, Tokenizer};

/// Turns a growing sequence of token ids into text increments, as vLLM's incremental detokenizer
/// does.
pub struct Detokenizer {
    stream: DecodeStream,
    /// The whole output text so far (truncated at a matched stop string).
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stops: Vec<String>,
    include_stop_str_in_output: bool,
    /// Bytes held back while a stop string could still be completing (vLLM's
    /// `stop_buffer_length`: the longest stop string less one, none when it is kept in output).
    hold: usize,
}

impl Detokenizer {
    /// A detokenizer of one sequence, ending its text at any of `stops`.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        skip_special_tokens: bool,
        stops: Vec<String>,
        include_stop_str_in_output: bool,
    ) -> Detokenizer {
        let hold = if include_stop_str_in_output {
            0
        } else {
            stops
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0)
        };
        Detokenizer {
            stream: DecodeStream::new(tokenizer, skip_special_tokens),
            text: String::new(),
            emitted: 0,
            stops,
            include_stop_str_in_output,
            hold,
        }
    }

    /// Adds a generated token's text; returns the stop string it completed, if any. After a
    /// match the text ends before the stop string (or after it, when it is kept in output).
    pub fn update(&mut self, token: u32) -> Option<String> {
        let before = self.text.len();
        if let Some(piece) = self.stream.step(token).ok().flatten() {
            self.text.push_str(&piece);
        }
        if self.text.len() == before {
            return None;
        }
        let (at, stop) = find_stop(&self.text, &self.stops, before)?;
        let stop = stop.to_owned();
        let end = if self.include_stop_str_in_output {
            at + stop.len()
        } else {
            at
        };
        self.text.truncate(end);
        Some(stop)
    }

    /// The text not yet handed out that no stop string can still claim (all of it when the
    /// request has finished).
    pub fn take_delta(&mut self, finished: bool) -> String {
        let hold = if finished { 0 } else { self.hold };
        let mut end = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let delta = self.text[self.emitted..end].to_owned();
        self.emitted = end;
        delta
    }
}

/// Where the earliest stop string starts in `text` and which it is, looking only at matches that
/// end in the bytes added after `new_from` (earlier text was checked when it arrived).
fn find_stop<'a>(text: &str, stops: &'a [String], new_from: usize) -> Option<(usize, &'a str)> {
    stops
        .iter()
        .filter_map(|s| {
            let mut start = (new_from + 1).saturating_sub(s.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..]
                .find(s.as_str())
                .map(|i| (start + i, s.as_str()))
        })
        .min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::find_stop;

    #[test]
    fn stop_strings_are_found_where_they_end_in_new_text() {
        let stop = vec!["\n\n".to_owned(), "END".to_owned()];
        assert_eq!(find_stop("abc\n\nd", &stop, 0), Some((3, "\n\n")));
        assert_eq!(find_stop("abcEN", &stop, 0), None);
        // "END" ends in the new byte at 5.
        assert_eq!(find_stop("abcEND", &stop, 5), Some((3, "END")));
        // Whole inside old text: already seen, not matched again.
        assert_eq!(find_stop("ENDabc", &stop, 4), None);
        assert_eq!(find_stop("é END", &stop, 4), Some((3, "END")));
        // The earliest of two matches wins.
        assert_eq!(find_stop("xEND\n\n", &stop, 0), Some((1, "END")));
    }
}
