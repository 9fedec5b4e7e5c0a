//! Logging to stderr, as text or JSON lines, filtered by `RUST_LOG`.
//!
//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as plain text or
//! as one JSON object per line (`--log-format json`). Under systemd, stderr goes to the journal.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Starts logging to stderr in `format`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colour only on a terminal: journald and log files get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
