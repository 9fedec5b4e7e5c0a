//! The `/metrics` route.

use axum::extract::State;
use axum::http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::recorder::Exporter;
use crate::render::{render, Format};

/// A router serving `GET /metrics` from `exporter`, negotiating the format from `Accept`.
/// Merge it into a server's router; it carries its own state.
pub fn router<S>(exporter: Exporter) -> Router<S> {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(exporter)
}

async fn metrics_handler(State(exporter): State<Exporter>, headers: HeaderMap) -> Response {
    respond(&exporter, &headers)
}

/// The `/metrics` response for a request with `headers`: the format negotiated from `Accept`.
/// For servers that route `/metrics` themselves (the Dynamo system status server).
pub fn respond(exporter: &Exporter, headers: &HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    // Rendering is CPU-only and bounded by the catalog (well under a millisecond).
    let body = render(exporter, format);
    encoded(format.content_type(), body, headers)
}

/// A text response of `content_type`, gzip-compressed when the request's `Accept-Encoding`
/// takes gzip (Prometheus sends `gzip` by default; vLLM's exporter answers compressed).
pub(crate) fn encoded(content_type: &'static str, body: String, request: &HeaderMap) -> Response {
    if accepts_gzip(request) {
        if let Some(compressed) = gzip(body.as_bytes()) {
            return gzipped(content_type, compressed);
        }
    }
    (
        [(CONTENT_TYPE, content_type), (VARY, "Accept-Encoding")],
        body,
    )
        .into_response()
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a weight above 0.
pub fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let weight = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && weight > 0.0
        })
}

/// `bytes` gzip-compressed at the fast level: a scrape is compressed once and read once.
pub fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    gzip_parts(&[bytes])
}

/// Compresses the concatenation of `parts` into one gzip stream, without joining them first.
pub fn gzip_parts(parts: &[&[u8]]) -> Option<Vec<u8>> {
    use std::io::Write;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(len / 4), flate2::Compression::fast());
    for part in parts {
        encoder.write_all(part).ok()?;
    }
    encoder.finish().ok()
}

/// A response with an already gzip-compressed body.
pub fn gzipped(content_type: &'static str, body: Vec<u8>) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_ENCODING, "gzip"),
            (VARY, "Accept-Encoding"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(encoding).unwrap());
        h
    }

    #[test]
    fn gzip_is_chosen_when_accepted_with_a_weight() {
        assert!(accepts_gzip(&with("gzip")));
        assert!(accepts_gzip(&with("deflate, GZIP;q=0.5")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("identity, br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_compressed_body_inflates_to_the_text() {
        use std::io::Read;
        let text = "vllm:x{engine=\"0\"} 1.0\n".repeat(1000);
        let compressed = gzip(text.as_bytes()).unwrap();
        assert!(compressed.len() < text.len() / 10);
        let mut back = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }
}
