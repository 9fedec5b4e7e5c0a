//! Listening, and the stop signals a server drains on.

use std::net::SocketAddr;

use anyhow::Context;

/// The base URL in the line `vigil serve` logs once it listens (`listening on http://ADDR`,
/// in text or JSON logs), for tools that start a server and wait for it.
pub fn listening_url(log_line: &str) -> Option<String> {
    let rest = log_line.split("listening on http://").nth(1)?;
    // Plain text ends the address at a space, a JSON log line at a quote.
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    Some(format!("http://{addr}"))
}

/// Listens on `--host`/`--port`; the error names both flags.
pub async fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(host, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--host {host} --port {port}: cannot listen on {addr}"))
}

/// SIGTERM and SIGINT (Ctrl-C), as a stream: the first starts the drain, a second cuts it
/// short, as vLLM's server does.
pub struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Listens for SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Signals {
                    unix: Some((term, int)),
                },
                _ => {
                    tracing::warn!("cannot install the SIGTERM/SIGINT handlers; Ctrl-C only");
                    Signals { unix: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod listening_url_tests {
    use super::listening_url;

    #[test]
    fn the_url_is_read_from_text_and_json_log_lines() {
        assert_eq!(
            listening_url("2026-11-23T00:00:00Z  INFO vigil::server: listening on http://127.0.0.1:4000 model_name=m").as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(
            listening_url(
                r#"{"fields":{"message":"listening on http://[::1]:80","model_name":"m"}}"#
            )
            .as_deref(),
            Some("http://[::1]:80")
        );
        assert_eq!(listening_url("loading model"), None);
    }
}
