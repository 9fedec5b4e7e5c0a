//! OTLP traces as vLLM's `--otlp-traces-endpoint` exports them.
//!
//! OTLP traces, as vLLM's `--otlp-traces-endpoint`: one `llm_request` span per client request,
//! with `queue`, `prefill` and `decode` child spans, exported in batches over OTLP to a
//! collector; gRPC by default, HTTP/protobuf with `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, as vLLM
//! reads it. An incoming W3C `traceparent` makes the span a child of the caller's, and the
//! request's trace id also goes into the exemplars on `/metrics` (beside its request id), so a
//! slow bucket leads to its trace. Every span is counted as exported, failed or dropped, and
//! losses are logged ([`accounting`]).

mod accounting;
mod request;

use std::sync::Arc;

use anyhow::{bail, Context};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

pub(crate) use request::{RequestTrace, TraceRequest};

/// The environment variable vLLM reads for the protocol (OpenTelemetry's name).
pub const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";

/// The tracer of a `vigil serve` with `--otlp-traces-endpoint`.
pub(crate) struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Sets up the exporter for `endpoint` (a URL: `http://collector:4317` for gRPC, the full
    /// `http://collector:4318/v1/traces` for HTTP, as the OpenTelemetry exporters take them).
    /// Runs inside the Tokio runtime: the gRPC client lives on it.
    /// `protocol` and `queue_size` are the values of [`PROTOCOL_VAR`] and [`QUEUE_SIZE_VAR`].
    pub(crate) fn start(
        endpoint: &str,
        protocol: Option<&str>,
        queue_size: Option<&str>,
    ) -> anyhow::Result<Traces> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("--otlp-traces-endpoint {endpoint}: not an http:// or https:// URL");
        }
        let protocol = protocol.unwrap_or("grpc");
        let exporter = match protocol {
            "grpc" => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .build(),
            other => bail!(
                "{PROTOCOL_VAR}={other}: unsupported OTLP protocol (use grpc or http/protobuf)"
            ),
        }
        .with_context(|| format!("--otlp-traces-endpoint {endpoint}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("vigil")
            .build();
        // The SDK reads its other batch settings (OTEL_BSP_*) from the environment itself.
        let queue = queue_capacity(queue_size)?;
        let counts = Arc::new(accounting::SpanCounts::default());
        let processor = BatchSpanProcessor::builder(accounting::CountedExporter::new(
            exporter,
            Arc::clone(&counts),
            endpoint,
        ))
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queue)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(accounting::Admission::new(processor, counts, queue))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("vigil");
        tracing::info!(endpoint, protocol, "exporting request traces over OTLP");
        Ok(Traces { provider, tracer })
    }

    pub(crate) fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Exports what is still batched and stops the exporter (at the end of a drain).
    pub(crate) async fn shutdown(&self) {
        let provider = self.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(err)) = done {
            tracing::warn!(%err, "flushing the last traces failed");
        }
    }
}

/// OpenTelemetry's variable for the span queue's size.
pub(crate) const QUEUE_SIZE_VAR: &str = "OTEL_BSP_MAX_QUEUE_SIZE";

/// The span queue's size: [`QUEUE_SIZE_VAR`]'s `value` when set, else 2048.
fn queue_capacity(value: Option<&str>) -> anyhow::Result<usize> {
    match value {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{QUEUE_SIZE_VAR}={v}: expected a positive number of spans"),
        },
        None => Ok(2048),
    }
}
