//! The server `vigil serve` runs around the engine: the API, `/metrics`, lifecycle, traces.
//!
//! The server `vigil serve` runs: the OpenAI API (`api`), `/metrics`, `/health` and
//! `/version`, Dynamo's system status server, life as a systemd service (ready, watchdog,
//! draining stop), OTLP traces, and connection limits, around the engine (the `engine`
//! crate, which composes itself: `engine::launch`). It reads no flags: it is given a [`ServerConfig`].

mod api;
mod body_end;
mod config;
mod lifecycle;
mod listener;
mod metrics_setup;
mod routes;
mod serve;
mod signals;
mod system_server;
mod traces;

pub use api::dynamo::{export_uptime, DynamoNames};
pub use api::{unix_now, ToolParser};
pub use config::{Environment, ServerConfig};
pub use serve::serve;
pub use signals::{bind, listening_url, Signals};
pub use traces::PROTOCOL_VAR as TRACES_PROTOCOL_VAR;
