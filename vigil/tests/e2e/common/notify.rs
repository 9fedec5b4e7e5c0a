//! A socket standing in for systemd's `NOTIFY_SOCKET`.
//!
//! A socket standing in for systemd's `NOTIFY_SOCKET`: the sd_notify messages a `Type=notify`
//! service sends, received for real.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// A socket standing in for systemd's `NOTIFY_SOCKET`, recording every message with its time.
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub(crate) fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    pub(crate) fn path_buf(&self) -> &std::path::Path {
        &self.path
    }

    pub(crate) fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next message, or None after `timeout`.
    pub(crate) fn recv(&self, timeout: Duration) -> Option<(Instant, String)> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some((
            Instant::now(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        ))
    }

    /// Messages up to and including the first containing `needle`; panics after `timeout`.
    pub(crate) fn until(&self, needle: &str, timeout: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.recv(left.max(Duration::from_millis(1))) else {
                panic!("no {needle:?} within {timeout:?}; got {seen:?}");
            };
            let done = msg.1.lines().any(|l| l == needle);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
}

/// How many of `msgs` carry the line `line`.
pub(crate) fn count(msgs: &[(Instant, String)], line: &str) -> usize {
    msgs.iter()
        .filter(|(_, m)| m.lines().any(|l| l == line))
        .count()
}
