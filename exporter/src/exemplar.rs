//! Attaching a request id (and, with tracing on, its trace id) to histogram observations.
//!
//! The `metrics` facade has no exemplar argument, so the request id travels beside the call: the
//! engine wraps the observations it makes for one request in [`with_request_id`] (or
//! [`with_request`] when the request has a trace), and every request-level histogram (catalog
//! entries with `exemplars: true`) recorded inside the closure on the same thread keeps
//! `{request_id="...",trace_id="..."}` as the exemplar of the bucket it landed in.
//! Exemplars are rendered only in OpenMetrics responses and only with `--enable-exemplars`; with
//! exemplars off the histograms have no exemplar slots and this costs one thread-local write.
//!
//! ```
//! use exporter::with_request_id;
//! # let ttft = metrics::Histogram::noop();
//! with_request_id("cmpl-8f2c", || ttft.record(0.042));
//! ```

use std::cell::RefCell;

/// OpenMetrics caps an exemplar's label set at 128 UTF-8 characters, names and values together.
pub(crate) const MAX_LABEL_SET_CHARS: usize = 128;
/// The exemplar's request label.
pub(crate) const LABEL: &str = "request_id";
/// The exemplar's trace label, present when the request is traced.
pub(crate) const TRACE_LABEL: &str = "trace_id";

/// The labels of the exemplars recorded in a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub request_id: String,
    pub trace_id: Option<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` with `request_id` as the exemplar of request-level histogram observations made on
/// this thread. Ids longer than the OpenMetrics limit allows are truncated (on a char boundary).
pub fn with_request_id<R>(request_id: &str, f: impl FnOnce() -> R) -> R {
    with_request(request_id, None, f)
}

/// Like [`with_request_id`], with the request's trace id beside it when it has one. The trace
/// id (32 hex digits) is kept whole; the request id is truncated to fit the 128-character limit.
pub fn with_request<R>(request_id: &str, trace_id: Option<&str>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let trace_id = trace_id.map(|t| truncate(t, 32).to_owned());
    let trace_chars = trace_id
        .as_ref()
        .map_or(0, |t| TRACE_LABEL.len() + t.chars().count());
    let id = truncate(
        request_id,
        MAX_LABEL_SET_CHARS - LABEL.chars().count() - trace_chars,
    );
    let scope = Scope {
        request_id: id.to_owned(),
        trace_id,
    };
    let previous = CURRENT.with(|c| c.borrow_mut().replace(scope));
    let _restore = Restore(previous);
    f()
}

/// The scope set by the innermost enclosing [`with_request`] on this thread.
pub(crate) fn current<R>(f: impl FnOnce(Option<&Scope>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_ref()))
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
        let id = || current(|s| s.map(|s| s.request_id.clone()));
        assert_eq!(id(), None);
        with_request_id("outer", || {
            assert_eq!(id().as_deref(), Some("outer"));
            with_request_id("inner", || assert_eq!(id().as_deref(), Some("inner")));
            assert_eq!(id().as_deref(), Some("outer"));
        });
        assert_eq!(id(), None);
    }

    #[test]
    fn scope_is_restored_after_a_panic() {
        let r = std::panic::catch_unwind(|| with_request_id("boom", || panic!("x")));
        assert!(r.is_err());
        current(|s| assert_eq!(s, None));
    }

    #[test]
    fn long_ids_fit_the_openmetrics_limit() {
        let long = "é".repeat(300);
        with_request_id(&long, || {
            current(|s| {
                let id = &s.unwrap().request_id;
                assert_eq!(id.chars().count() + LABEL.len(), MAX_LABEL_SET_CHARS);
            })
        });
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        with_request(&long, Some(trace), || {
            current(|s| {
                let s = s.unwrap();
                assert_eq!(s.trace_id.as_deref(), Some(trace));
                let chars = s.request_id.chars().count() + LABEL.len() + TRACE_LABEL.len() + 32;
                assert_eq!(chars, MAX_LABEL_SET_CHARS);
            })
        });
    }
}
