//! `--otlp-traces-endpoint` end to end, against a real OTLP receiver.
//!
//! `--otlp-traces-endpoint` end to end: the real `vigil serve` exports to a real OTLP receiver
//! built in this test on the official protobuf definitions (opentelemetry-proto) — a tonic gRPC
//! TraceService (vLLM's default protocol) and an HTTP/protobuf endpoint — and the spans'
//! content is checked: names, parentage from an incoming `traceparent`, GenAI and vLLM
//! attributes against the response's usage, child spans inside their parent, and the trace id
//! in the OpenMetrics exemplars.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Every span received, with its resource's service name.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    all.push((service.clone(), span));
                }
            }
        }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `n` spans named `name` arrived.
    fn wait(&self, name: &str, n: usize) -> Vec<Span> {
        wait_for(
            &format!("{n} {name} spans"),
            Duration::from_secs(20),
            || {
                let found: Vec<Span> = self
                    .spans()
                    .into_iter()
                    .map(|(_, s)| s)
                    .filter(|s| s.name == name)
                    .collect();
                (found.len() >= n).then_some(found)
            },
        )
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> &'a AnyValue {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .unwrap_or_else(|| {
            panic!(
                "{} has no attribute {key}: {:?}",
                span.name, span.attributes
            )
        })
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        AnyValue::IntValue(i) => *i,
        other => panic!("{key} = {other:?}"),
    }
}

fn float(span: &Span, key: &str) -> f64 {
    match attr(span, key) {
        AnyValue::DoubleValue(f) => *f,
        other => panic!("{key} = {other:?}"),
    }
}

fn text(span: &Span, key: &str) -> String {
    string(attr(span, key)).unwrap_or_else(|| panic!("{key} is not a string"))
}

/// A request span's `gen_ai.response.finish_reasons`.
fn finish_reasons(span: &Span) -> Vec<String> {
    match attr(span, "gen_ai.response.finish_reasons") {
        AnyValue::ArrayValue(a) => a
            .values
            .iter()
            .filter_map(|v| string(v.value.as_ref()?))
            .collect(),
        other => panic!("finish_reasons = {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tokio runtime on its own thread serving the receiver; returns its address.
fn start_receiver(received: Received, grpc: bool) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            if grpc {
                let incoming = async_stream(listener);
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(received))
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            } else {
                use axum::routing::post;
                let app = axum::Router::new().route(
                    "/v1/traces",
                    post(move |body: axum::body::Bytes| {
                        let received = received.clone();
                        async move {
                            let req = <ExportTraceServiceRequest as prost::Message>::decode(body)
                                .expect("an OTLP protobuf body");
                            received.add(req);
                            (
                                [("content-type", "application/x-protobuf")],
                                prost::Message::encode_to_vec(&ExportTraceServiceResponse {
                                    partial_success: None,
                                }),
                            )
                        }
                    }),
                );
                axum::serve(listener, app).await.unwrap();
            }
        });
    });
    addr
}

/// The listener's connections as the stream tonic serves.
fn async_stream(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";
const STOP_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

#[test]
fn grpc_spans_carry_genai_and_vllm_attributes_parentage_and_child_phases() {
    let received = Received::default();
    let addr = start_receiver(received.clone(), true);
    let vigil = Vigil::serve_env(
        &[
            "--otlp-traces-endpoint",
            &format!("http://{addr}"),
            "--enable-exemplars",
            "--served-model-name",
            "smollm",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    let traceparent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let (status, body) = http_post(
        &vigil.url("/v1/completions"),
        br#"{"prompt": "The capital of France is", "max_tokens": 8, "ignore_eos": true, "temperature": 0.5, "top_p": 0.9}"#,
        &[("traceparent", &traceparent)],
    );
    assert_eq!(status, 200, "{body}");
    let response: serde_json::Value = serde_json::from_str(&body).unwrap();
    // (Before any other request can take its buckets' exemplars.)
    // The request's exemplars carry its trace id beside its request id.
    let (_, _, om) = vigil.get(
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    let exemplar = format!(
        "request_id=\"{}\",trace_id=\"{PARENT_TRACE}\"",
        response["id"].as_str().unwrap()
    );
    assert!(
        om.lines()
            .any(|l| l.starts_with("vllm:e2e_request_latency_seconds_bucket")
                && l.contains(&exemplar)),
        "no exemplar with {exemplar}"
    );
    let (status, _) = http_post(
        &vigil.url("/v1/chat/completions"),
        br#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}"#,
        &[],
    );
    assert_eq!(status, 200);
    // A request that ends on a stop string: its span and phases come from the engine's finish.
    let stop_parent = format!("00-{STOP_TRACE}-{PARENT_SPAN}-01");
    let (status, stopped) = http_post(
        &vigil.url("/v1/completions"),
        br#"{"prompt": "The capital of France is", "max_tokens": 30, "temperature": 0, "stop": ["."]}"#,
        &[("traceparent", &stop_parent)],
    );
    assert_eq!(status, 200);
    assert!(stopped.contains(r#""finish_reason":"stop""#), "{stopped}");

    let requests = received.wait("llm_request", 3);
    let completion = requests
        .iter()
        .find(|s| hex(&s.trace_id) == PARENT_TRACE)
        .expect("the completion's span continues the caller's trace");
    assert_eq!(hex(&completion.parent_span_id), PARENT_SPAN);
    assert_eq!(completion.kind, SpanKind::Server as i32);
    assert_eq!(text(completion, "gen_ai.operation.name"), "text_completion");
    assert_eq!(text(completion, "gen_ai.request.model"), "smollm");
    assert_eq!(text(completion, "gen_ai.response.model"), "smollm");
    assert_eq!(
        text(completion, "gen_ai.request.id"),
        response["id"].as_str().unwrap()
    );
    assert_eq!(int(completion, "gen_ai.request.max_tokens"), 8);
    assert_eq!(float(completion, "gen_ai.request.temperature"), 0.5);
    assert!((float(completion, "gen_ai.request.top_p") - 0.9).abs() < 1e-6);
    let usage = &response["usage"];
    for key in ["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"] {
        assert_eq!(
            int(completion, key),
            usage["prompt_tokens"].as_i64().unwrap()
        );
    }
    for key in [
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
    ] {
        assert_eq!(int(completion, key), 8);
    }
    assert_eq!(finish_reasons(completion), ["length"]);
    let e2e = float(completion, "gen_ai.latency.e2e");
    let ttft = float(completion, "gen_ai.latency.time_to_first_token");
    let decode = float(completion, "gen_ai.latency.time_in_model_decode");
    assert!(
        e2e > 0.0 && ttft > 0.0 && ttft < e2e && decode < e2e,
        "{e2e} {ttft} {decode}"
    );
    let span_secs = (completion.end_time_unix_nano - completion.start_time_unix_nano) as f64 / 1e9;
    assert!(
        (span_secs - e2e).abs() < 0.05,
        "span {span_secs} s vs e2e {e2e} s"
    );

    // The phases are children of the request span, in order, inside it.
    let phases_inside = |request: &Span| {
        let mut starts = Vec::new();
        for phase in ["queue", "prefill", "decode"] {
            let child = received
                .wait(phase, 1)
                .into_iter()
                .find(|s| s.trace_id == request.trace_id)
                .unwrap_or_else(|| panic!("no {phase} span in the request's trace"));
            assert_eq!(child.parent_span_id, request.span_id, "{phase}");
            assert!(
                child.start_time_unix_nano >= request.start_time_unix_nano,
                "{phase}"
            );
            assert!(
                child.end_time_unix_nano <= request.end_time_unix_nano,
                "{phase}"
            );
            starts.push(child.start_time_unix_nano);
        }
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    };
    phases_inside(completion);
    let stopped = requests
        .iter()
        .find(|s| hex(&s.trace_id) == STOP_TRACE)
        .expect("the stopped request's span");
    assert_eq!(finish_reasons(stopped), ["stop"]);
    phases_inside(stopped);

    // The chat had no traceparent: a trace of its own.
    let chat = requests
        .iter()
        .find(|s| text(s, "gen_ai.operation.name") == "chat")
        .unwrap();
    assert_ne!(hex(&chat.trace_id), PARENT_TRACE);
    assert!(chat.parent_span_id.is_empty());
    assert!(received
        .spans()
        .iter()
        .all(|(service, _)| service == "vigil"));
    // Every span the collector took is counted exported (once its answer is back), none failed
    // or dropped.
    wait_for("every span counted", Duration::from_secs(10), || {
        let taken = received.spans().len() as f64;
        (spans_counted(&vigil, "exported") == Some(taken)).then_some(())
    });
    assert_eq!(spans_counted(&vigil, "failed"), Some(0.0));
    assert_eq!(spans_counted(&vigil, "dropped"), Some(0.0));
}

#[test]
fn http_protobuf_export_and_the_last_spans_are_flushed_at_shutdown() {
    let received = Received::default();
    let addr = start_receiver(received.clone(), false);
    // The default batch delay (5 s) is left as it is: the span below leaves only because the
    // shutdown flushes it.
    let mut vigil = Vigil::serve_env(
        &[
            "--otlp-traces-endpoint",
            &format!("http://{addr}/v1/traces"),
        ],
        &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")],
    );
    let (status, _) = http_post(
        &vigil.url("/v1/completions"),
        br#"{"prompt": "Hello", "max_tokens": 3}"#,
        &[],
    );
    assert_eq!(status, 200);
    let status = vigil.terminate(Duration::from_secs(30));
    assert!(status.success());
    let spans = received.wait("llm_request", 1);
    assert_eq!(text(&spans[0], "gen_ai.operation.name"), "text_completion");
    assert!(int(&spans[0], "gen_ai.usage.output_tokens") >= 1);
}

#[test]
fn an_unknown_protocol_is_a_clear_start_up_error() {
    let out = std::process::Command::new(VIGIL)
        .args([
            "serve",
            require_model(),
            "--port",
            "0",
            "--otlp-traces-endpoint",
            "http://127.0.0.1:4317",
        ])
        .env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=carrier-pigeon: unsupported OTLP protocol"
        ),
        "{err}"
    );
}

/// A collector that accepts connections and never answers.
fn black_hole() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    addr
}

/// An HTTP/protobuf collector that answers each export after `delay`.
fn slow_collector(delay: Duration) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf);
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                );
            });
        }
    });
    addr
}

fn spans_counted(vigil: &Vigil, outcome: &str) -> Option<f64> {
    sample(
        &vigil.metrics(),
        &format!("vigil_trace_spans_total{{outcome=\"{outcome}\"}}"),
    )
}

/// A closed port, a black hole and a slow collector each lose the traces loudly: a log line
/// (rate-limited) and `vigil_trace_spans_total{outcome="failed"}`; none are counted exported,
/// and the requests themselves are served as usual.
#[test]
fn export_failures_are_logged_and_counted() {
    let closed = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let hole = format!("http://{}", black_hole());
    let slow = format!(
        "http://{}/v1/traces",
        slow_collector(Duration::from_secs(5))
    );
    for (what, endpoint, protocol) in [
        ("closed port", closed, "http/protobuf"),
        ("black hole", hole, "grpc"),
        ("slow collector", slow, "http/protobuf"),
    ] {
        let vigil = Vigil::serve_env(
            &["--otlp-traces-endpoint", &endpoint],
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ],
        );
        // At 0 before anything happens.
        assert_eq!(spans_counted(&vigil, "failed"), Some(0.0), "{what}");
        for _ in 0..3 {
            let (status, _) = http_post(
                &vigil.url("/v1/completions"),
                br#"{"prompt": "Hello", "max_tokens": 2}"#,
                &[],
            );
            assert_eq!(status, 200, "{what}");
        }
        wait_for(
            &format!("{what}: failures counted"),
            Duration::from_secs(20),
            || (spans_counted(&vigil, "failed")? >= 1.0).then_some(()),
        );
        wait_for(
            &format!("{what}: the log line"),
            Duration::from_secs(10),
            || {
                vigil
                    .log()
                    .contains("exporting request traces failed")
                    .then_some(())
            },
        );
        assert_eq!(spans_counted(&vigil, "exported"), Some(0.0), "{what}");
        // Rate-limited: one line however many batches failed.
        let lines = vigil
            .log()
            .matches("exporting request traces failed")
            .count();
        assert_eq!(lines, 1, "{what}: {}", vigil.log());
    }
}

/// With the collector stuck, the export queue fills and spans are dropped: each is counted and
/// the drops are logged; spans are never lost without a count (taken by the exporter or
/// dropped, every span of the requests is accounted for).
#[test]
fn a_full_export_queue_drops_spans_counted_and_logged() {
    let vigil = Vigil::serve_env(
        &[
            "--otlp-traces-endpoint",
            &format!("http://{}", black_hole()),
        ],
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
        ],
    );
    for _ in 0..5 {
        let (status, _) = http_post(
            &vigil.url("/v1/completions"),
            br#"{"prompt": "Hello", "max_tokens": 2}"#,
            &[],
        );
        assert_eq!(status, 200);
    }
    let dropped = wait_for("drops counted", Duration::from_secs(10), || {
        spans_counted(&vigil, "dropped").filter(|d| *d >= 1.0)
    });
    wait_for("the log line", Duration::from_secs(10), || {
        vigil.log().contains("export queue is full").then_some(())
    });
    // Five requests make 20 spans (the request and its queue, prefill and decode phases): at
    // most the queue and the batch in the stuck export are not dropped.
    assert!(dropped >= 20.0 - 4.0 - 2.0, "{dropped}");
    assert_eq!(spans_counted(&vigil, "exported"), Some(0.0));
}
