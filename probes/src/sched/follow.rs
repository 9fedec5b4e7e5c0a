//! Following a watched process that starts late, restarts under a new PID, or goes away.
//!
//! Watching a process that comes and goes: the engine a node agent fronts may start after the
//! agent, restart under a new PID, or not run at all. Every interval the poller checks that the
//! process it watches is still the one it attached to (same PID and start time, not a zombie);
//! when it is gone, or before one was found, it asks again who the engine is and attaches to
//! that one. The status says which it is (`running` or `no_target`), and the counters carry on
//! across processes, so a restart is not a counter reset.

use std::time::Duration;

use exporter::Exporter;

use super::maps::Snapshot;
use super::{export, Poller, SchedProbe};
use crate::status::{self, Probe, State};

/// One process, told apart from a later one that reuses its PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    start_time: u64,
}

impl Process {
    /// The live process `pid` (`None` when there is none, or only its zombie).
    pub(crate) fn live(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold anything: fields follow the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let state = *fields.first()?;
        if state == "Z" || state == "X" {
            return None;
        }
        Some(Process {
            pid,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        Process::live(self.pid) == Some(*self)
    }
}

impl Poller {
    /// Watches the process `find` names, whenever there is one: `find` is asked at start and
    /// again each interval while no live process is watched. Stops (with the status saying why)
    /// only when the probe cannot run on this machine at all.
    pub(crate) fn follow(
        exporter: Exporter,
        mut find: impl FnMut() -> Option<u32> + Send + 'static,
        interval: Duration,
    ) -> Option<Poller> {
        status::set(
            &exporter,
            Probe::Ebpf,
            &State::off("no_target", "looking for the engine's process"),
        );
        let mut watched: Option<(Process, SchedProbe)> = None;
        // What processes watched before counted, and the current one so far.
        let mut before = Snapshot::default();
        let mut current = Snapshot::default();
        let mut searching_logged = true;
        Poller::spawn(&exporter, interval, move |exporter| {
            if let Some((process, _)) = &watched {
                if !process.is_alive() {
                    let pid = process.pid;
                    watched = None;
                    before.add(&current);
                    current = Snapshot::default();
                    status::set(
                        exporter,
                        Probe::Ebpf,
                        &State::off(
                            "no_target",
                            "the engine's process exited; looking for its successor",
                        ),
                    );
                    // Logged once the status says so: a reader of the log then finds
                    // `/metrics` agreeing.
                    tracing::info!(pid, "the engine's process is gone");
                }
            }
            if watched.is_none() {
                match find().and_then(Process::live) {
                    Some(process) => {
                        let probe = SchedProbe::attach(process.pid)?;
                        tracing::info!(pid = process.pid, "watching the engine's process");
                        status::set(exporter, Probe::Ebpf, &State::Running);
                        watched = Some((process, probe));
                        searching_logged = false;
                    }
                    None if !searching_logged => {
                        searching_logged = true;
                        tracing::info!("no engine process yet; looking each interval");
                    }
                    None => {}
                }
            }
            if let Some((_, probe)) = &watched {
                current = probe.read().map_err(|e| State::off("failed", e))?;
                let mut total = before.clone();
                total.add(&current);
                export::apply(exporter, &total).map_err(|e| State::off("failed", e.to_string()))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = Process::live(std::process::id()).expect("this process");
        assert!(me.is_alive());
        let other = Process {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive(), "a reused PID is another process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped: a zombie is no process to watch.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(Process::live(pid), None);
        child.wait().unwrap();
        assert_eq!(Process::live(pid), None);
    }
}
