//! The API's listener, with connection, idle and read-time limits.
//!
//! The API's listener: at most `--max-connections` connections at once (more are closed at
//! once, logged and counted), a connection idle (nothing sent since it opened, or since its last
//! response) for `--http-idle-timeout` is closed, so is one whose request (headers and body)
//! takes longer than `--http-read-timeout` to arrive (a client trickling bytes holds no slot for
//! ever), and a failed accept (out of file descriptors above all) is logged, counted and retried
//! instead of silently stalling the server.

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

/// How long a connection may wait: idle between requests, and reading one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub idle: Duration,
    pub read: Duration,
}

pub(crate) struct GuardedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    timeouts: Timeouts,
    last_logged: Option<Instant>,
}

impl GuardedListener {
    pub(crate) fn new(
        listener: TcpListener,
        max_connections: usize,
        timeouts: Timeouts,
    ) -> GuardedListener {
        GuardedListener {
            listener,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            max: max_connections.max(1),
            timeouts,
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
                        return (GuardedIo::new(stream, slot, self.timeouts), addr);
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

/// The client's address, as the handlers' `ConnectInfo` (the access log's), and the handle by
/// which the server tells the connection its request has been read whole.
#[derive(Debug, Clone)]
pub(crate) struct ClientAddr(pub std::net::SocketAddr, pub RequestSignals);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> ClientAddr {
        ClientAddr(*stream.remote_addr(), stream.io().request_read.clone())
    }
}

/// What the server tells a connection of its request: read whole (its body read to the end, or
/// it has none: from then on it is being answered, and no read deadline applies), and answered
/// (the response sent or dropped: from then on the connection is idle).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestSignals {
    read: Arc<std::sync::atomic::AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicBool>,
}

impl RequestSignals {
    fn set_read(&self) {
        self.read.store(true, std::sync::atomic::Ordering::Release);
    }

    fn set_answered(&self) {
        self.answered
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn take_read(&self) -> bool {
        self.read.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    fn take_answered(&self) -> bool {
        self.answered
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// Middleware: tells the connection when its request has been read whole, and when it has been
/// answered.
pub(crate) async fn mark_request_read(
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<ClientAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::body::HttpBody;
    let (parts, body) = req.into_parts();
    let signals = client.1;
    let body = if body.is_end_stream() {
        signals.set_read();
        body
    } else {
        let signals = signals.clone();
        crate::body_end::on_end(body, move |complete| {
            if complete {
                signals.set_read();
            }
        })
    };
    let (parts, body) = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await
        .into_parts();
    let body = crate::body_end::on_end(body, move |_| signals.set_answered());
    axum::response::Response::from_parts(parts, body)
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

/// Where a connection stands, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing read since it opened or since its last request was answered: the idle timeout
    /// runs.
    Idle,
    /// A request is arriving: the read timeout runs from its first byte.
    Reading,
    /// The request has arrived whole: it is being answered, however long that takes.
    Answering,
}

/// A connection holding its slot, under its timeouts.
pub(crate) struct GuardedIo {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    timeouts: Timeouts,
    phase: Phase,
    deadline: Pin<Box<tokio::time::Sleep>>,
    request_read: RequestSignals,
}

impl GuardedIo {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, timeouts: Timeouts) -> GuardedIo {
        GuardedIo {
            stream,
            _slot: slot,
            timeouts,
            phase: Phase::Idle,
            deadline: Box::pin(tokio::time::sleep(timeouts.idle)),
            request_read: RequestSignals::default(),
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        let wait = match phase {
            Phase::Idle => self.timeouts.idle,
            Phase::Reading => self.timeouts.read,
            Phase::Answering => return,
        };
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + wait);
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
        if self.request_read.take_answered() {
            // Answered: what comes next from the client starts a new request.
            self.request_read.take_read();
            self.enter(Phase::Idle);
        } else if self.phase == Phase::Reading && self.request_read.take_read() {
            self.enter(Phase::Answering);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && self.phase == Phase::Idle {
                    self.enter(Phase::Reading);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.phase != Phase::Answering => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    let (reason, what) = match self.phase {
                        Phase::Idle => ("idle", "connection idle"),
                        _ => ("slow_request", "request not read in time"),
                    };
                    GuardedListener::dropped(reason);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        what,
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
        Pin::new(&mut self.stream).poll_write(cx, data)
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
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
