//! The server `vigil serve` runs: the OpenAI API ([`api`]), `/metrics`, `/health` and
//! `/version`, Dynamo's system status server, life as a systemd service (ready, watchdog,
//! draining stop), OTLP traces, and connection limits, around the engine core (the `engine`
//! crate). It reads no flags: it is given a [`ServerConfig`].

pub mod api;
mod backend_choice;
mod body_end;
mod config;
pub mod lifecycle;
mod listener;
mod metrics_setup;
mod routes;
mod serve;
mod signals;
mod system_server;
pub mod traces;

pub use api::dynamo::DynamoNames;
pub use api::ToolParser;
pub use config::{
    Device, ServerConfig, CPU_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MODEL,
};
pub use serve::serve;
pub use signals::{bind, listening_url, Signals};
