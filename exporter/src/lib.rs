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
//! This crate depends on no other crate of Vigil's. Its `/metrics` route (module `route`, axum and
//! gzip) is behind the `http` feature, which only the crates that serve HTTP enable.

pub mod buckets;
pub mod catalog;
pub mod docs;
pub mod exemplar;
pub mod gating;
pub mod parse;
pub mod recorder;
pub mod render;
#[cfg(feature = "http")]
pub mod route;
pub mod version;

pub use recorder::{Exporter, ExporterConfig, SetError};
pub use render::Format;
pub use version::MinorVersion;

impl Exporter {
    /// Renders every visible series in `format`.
    pub fn render(&self, format: Format) -> String {
        render::render(self, format)
    }
}
