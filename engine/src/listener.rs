//! The API's listener: at most `--max-connections` connections at once (more are closed at
//! once, logged and counted), a connection idle (nothing sent since it opened, or since its last
//! response) for the idle timeout is closed, and a failed accept (out of file descriptors
//! above all) is logged, counted and retried instead of silently stalling the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use exporter::catalog::service::{HTTP_CONNECTIONS_DROPPED, HTTP_CONNECTIONS_OPEN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Logs a repeated condition at most once per this period.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct GuardedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
    last_logged: Option<Instant>,
}

impl GuardedListener {
    pub fn new(listener: TcpListener, max_connections: usize, idle: Duration) -> GuardedListener {
        GuardedListener {
            listener,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            max: max_connections.max(1),
            idle,
            last_logged: None,
        }
    }

    /// Whether a repeated condition should be logged now.
    fn log_now(&mut self) -> bool {
        let now = Instant::now();
        let due = self.last_logged.is_none_or(|t| now - t >= LOG_EVERY);
        if due {
            self.last_logged = Some(now);
        }
        due
    }

    fn dropped(reason: &'static str) {
        metrics::counter!(HTTP_CONNECTIONS_DROPPED.name, "reason" => reason).increment(1);
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, std::net::SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => match Arc::clone(&self.slots).try_acquire_owned() {
                    Ok(slot) => {
                        metrics::gauge!(HTTP_CONNECTIONS_OPEN.name).increment(1.0);
                        return (GuardedIo::new(stream, slot, self.idle), addr);
                    }
                    Err(_) => {
                        Self::dropped("over_limit");
                        if self.log_now() {
                            tracing::warn!(
                                max = self.max,
                                %addr,
                                "connection refused: --max-connections reached"
                            );
                        }
                    }
                },
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    let out_of_files =
                        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    Self::dropped(if out_of_files {
                        "out_of_files"
                    } else {
                        "accept_error"
                    });
                    if self.log_now() {
                        if out_of_files {
                            tracing::error!(
                                "cannot accept connections: out of file descriptors ({e}); raise \
                                 LimitNOFILE= (ulimit -n) or lower --max-connections"
                            );
                        } else {
                            tracing::error!("cannot accept a connection: {e}");
                        }
                    }
                    // Give connections time to close before trying again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// The client's address, as the handlers' `ConnectInfo` (the access log's).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> ClientAddr {
        ClientAddr(*stream.remote_addr())
    }
}

/// Errors about one connection that came and went (not the listener's).
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A connection holding its slot, closed once idle. "Idle" is: nothing read since it opened or
/// since the server last wrote to it (a request answered); while a request is being read or
/// answered (its last activity was a read), it never times out, however long the answer takes.
pub struct GuardedIo {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    /// Whether the last activity was the client's (a request in progress).
    client_spoke_last: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl GuardedIo {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle: Duration) -> GuardedIo {
        GuardedIo {
            stream,
            _slot: slot,
            idle,
            client_spoke_last: false,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn rearm(&mut self) {
        let at = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_CONNECTIONS_OPEN.name).decrement(1.0);
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.client_spoke_last = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if !self.client_spoke_last => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    GuardedListener::dropped("idle");
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection idle",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                // The server answered: from here, waiting for the client is idleness.
                self.client_spoke_last = false;
                self.rearm();
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.client_spoke_last = false;
                self.rearm();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
