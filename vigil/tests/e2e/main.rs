//! The end-to-end tests, one binary: the real `vigil` driven as its users drive it.
//!
//! The end-to-end tests, one binary: each module starts the real `vigil` binary (or drives a
//! real tool against it: Prometheus, promtool, systemd, the OpenAI client, llama.cpp) and talks
//! to it as its users do. One binary links the stack once and lets libtest run every test in
//! one pool; `tests/stalls.rs` stays apart because it measures latency and must not share the
//! machine's cores with the other tests.

mod common;

mod accelerator_simulated;
mod agent;
mod api;
mod cli;
mod dashboard;
mod dynamo;
mod export_tokenizer;
mod http_limits;
mod llama_cpp_agreement;
mod metric_truth;
mod metrics_endpoint;
mod model_smollm2;
mod probes;
mod prometheus_rules;
mod prometheus_scrape;
mod service;
mod simulated_nvml;
mod soak;
mod structured_outputs;
mod systemd;
mod top;
mod traces;
