//! The sd_notify protocol: ready, stopping, status lines and the watchdog.
//!
//! The sd_notify protocol (`Type=notify` services): `READY=1` once the model is loaded, warmed up
//! and the listener bound; `STOPPING=1` when a drain begins; `STATUS=` lines for
//! `systemctl status`; and `WATCHDOG=1` while the engine loop keeps going round.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. A failed send is logged at
//! debug level and otherwise ignored: notifications must never take the server down.

use std::time::Duration;

use sd_notify::NotifyState;

use engine::EngineHandle;

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(%err, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status line.
pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A status line alone (`systemctl status` shows it).
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// What the watchdog thread does on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// The engine loop went round recently: `WATCHDOG=1`.
    Feed,
    /// The engine loop is stuck in one step: send nothing, so that systemd's timer runs out.
    Withhold,
    /// The engine thread is gone: `WATCHDOG=trigger`, restart now.
    Trigger,
}

/// The watchdog's decision, given the engine's state and the period systemd asked for. The
/// thread ticks every half period; the engine counts as stuck once it has not beaten for half a
/// period (neither its loop gone round nor the step in progress finished a layer), so systemd
/// restarts a wedged engine within one and a half periods, and never a slow one that moves.
pub(crate) fn tick(alive: bool, heartbeat_age: Duration, period: Duration) -> Tick {
    if !alive {
        Tick::Trigger
    } else if heartbeat_age < period / 2 {
        Tick::Feed
    } else {
        Tick::Withhold
    }
}

/// Starts the `vigil-watchdog` thread when systemd set `WatchdogSec=` (`WATCHDOG_USEC` for this
/// process); returns the period.
pub(crate) fn start_watchdog(engine: EngineHandle) -> Option<Duration> {
    let period = sd_notify::watchdog_enabled()?;
    let every = period / 2;
    tracing::info!(
        ?period,
        "systemd watchdog on: fed while the engine loop runs"
    );
    let spawned = std::thread::Builder::new()
        .name("vigil-watchdog".into())
        .spawn(move || {
            let mut withheld = false;
            loop {
                std::thread::sleep(every);
                let age = engine.heartbeat().age();
                match tick(engine.is_alive(), age, period) {
                    Tick::Feed => {
                        if withheld {
                            tracing::info!("the engine loop runs again; feeding the watchdog");
                            withheld = false;
                        }
                        send(&[NotifyState::Watchdog]);
                    }
                    Tick::Withhold => {
                        if !withheld {
                            tracing::error!(
                                ?age,
                                "the engine loop has not gone round; withholding the watchdog"
                            );
                            withheld = true;
                        }
                    }
                    Tick::Trigger => {
                        tracing::error!("the engine thread is gone; triggering the watchdog");
                        send(&[NotifyState::WatchdogTrigger]);
                        return;
                    }
                }
            }
        });
    if let Err(err) = spawned {
        tracing::error!(%err, "cannot start the watchdog thread");
    }
    Some(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_the_engine_loop_goes_round() {
        let period = Duration::from_secs(10);
        assert_eq!(tick(true, Duration::from_millis(300), period), Tick::Feed);
        assert_eq!(tick(true, Duration::from_secs(6), period), Tick::Withhold);
        assert_eq!(tick(false, Duration::ZERO, period), Tick::Trigger);
    }
}
