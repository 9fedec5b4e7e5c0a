//! Vigil's one exporter: the metric catalog, its recorder and the `/metrics` exposition.
//!
//! Vigil's one exporter: the metric catalog, deprecation gating, the recorder behind the
//! `metrics` facade, and the `/metrics` exposition (Prometheus text and OpenMetrics).
//!
//! ```
//! use exporter::{catalog::vllm, Exporter, ExporterConfig, Format};
//!
//! let exporter = Exporter::new(ExporterConfig::new(8192));
//! exporter.precreate("my-model", &["0"]);
//! metrics::with_local_recorder(&exporter, || {
//!     metrics::counter!(vllm::PROMPT_TOKENS.name, "model_name" => "my-model", "engine" => "0")
//!         .increment(5);
//! });
//! let text = exporter.render(Format::Prometheus);
//! assert!(text.contains(r#"vllm:prompt_tokens_total{engine="0",model_name="my-model"} 5.0"#));
//! ```
//!
//! This crate depends on no other crate of Vigil's. Its `/metrics` route ([`router`], axum and
//! gzip) is behind the `http` feature, which only the crates that serve HTTP enable.

mod buckets;
pub mod catalog;
mod docs;
mod exemplar;
mod gating;
mod parse;
mod recorder;
mod render;
#[cfg(feature = "http")]
mod route;
mod version;

pub use buckets::{BucketConfig, BucketFamily};
pub use docs::metrics_markdown;
pub use exemplar::{with_request, with_request_id};
pub use gating::{parse_show_hidden_flag, visibility, Running, Visibility};
pub use parse::{series_hash, Exposition, Sample};
pub use recorder::{Exporter, ExporterConfig, SetError};
pub use render::escape::write_help;
pub use render::number::{format_float, write_float};
pub use render::{render, Format};
#[cfg(feature = "http")]
pub use route::{accepts_gzip, gzip, gzip_parts, gzipped, respond, router};
pub use version::MinorVersion;

impl Exporter {
    /// Renders every visible series in `format`.
    pub fn render(&self, format: Format) -> String {
        render::render(self, format)
    }
}
