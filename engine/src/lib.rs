//! Vigil's engine crate: the command line, the HTTP server and (as they land) model loading,
//! backends, KV cache and scheduler. `main.rs` is a thin wrapper around [`run`].

pub mod api;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod engine_core;
pub mod kv_cache;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod server;
pub mod testing;
pub mod tokenizer;

use anyhow::Context;

/// Runs the command the user asked for.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("vigil-http")
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(server::serve(*args))
        }
        cli::Command::Bench(cli::BenchCommand::Serve(args)) => bench::run(*args),
    }
}
