//! Attaching a request id to histogram observations.
//!
//! The `metrics` facade has no exemplar argument, so the request id travels beside the call: the
//! engine wraps the observations it makes for one request in [`with_request_id`], and every
//! request-level histogram (catalog entries with `exemplars: true`) recorded inside the closure
//! on the same thread keeps `{request_id="..."}` as the exemplar of the bucket it landed in.
//! Exemplars are rendered only in OpenMetrics responses and only with `--enable-exemplars`; with
//! exemplars off the histograms have no exemplar slots and this costs one thread-local write.
//!
//! ```
//! use exporter::exemplar::with_request_id;
//! # let ttft = metrics::Histogram::noop();
//! with_request_id("cmpl-8f2c", || ttft.record(0.042));
//! ```

use std::cell::RefCell;

/// OpenMetrics caps an exemplar's label set at 128 UTF-8 characters, names and values together.
pub const MAX_LABEL_SET_CHARS: usize = 128;
/// The exemplar's one label name.
pub const LABEL: &str = "request_id";

thread_local! {
    static CURRENT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` with `request_id` as the exemplar of request-level histogram observations made on
/// this thread. Ids longer than the OpenMetrics limit allows are truncated (on a char boundary).
pub fn with_request_id<R>(request_id: &str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let id = truncate(request_id, MAX_LABEL_SET_CHARS - LABEL.chars().count());
    let previous = CURRENT.with(|c| c.borrow_mut().replace(id.to_owned()));
    let _restore = Restore(previous);
    f()
}

/// The request id set by the innermost enclosing [`with_request_id`] on this thread.
pub(crate) fn current<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_deref()))
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        current(|id| assert_eq!(id, None));
        with_request_id("outer", || {
            current(|id| assert_eq!(id, Some("outer")));
            with_request_id("inner", || current(|id| assert_eq!(id, Some("inner"))));
            current(|id| assert_eq!(id, Some("outer")));
        });
        current(|id| assert_eq!(id, None));
    }

    #[test]
    fn scope_is_restored_after_a_panic() {
        let r = std::panic::catch_unwind(|| with_request_id("boom", || panic!("x")));
        assert!(r.is_err());
        current(|id| assert_eq!(id, None));
    }

    #[test]
    fn long_ids_fit_the_openmetrics_limit() {
        let long = "é".repeat(300);
        with_request_id(&long, || {
            current(|id| {
                let id = id.unwrap();
                assert_eq!(id.chars().count() + LABEL.len(), MAX_LABEL_SET_CHARS);
            })
        });
    }
}
