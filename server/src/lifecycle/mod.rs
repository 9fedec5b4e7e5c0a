//! Vigil's life as a service: systemd notifications and the draining stop.
//!
//! Vigil's life as a service: telling systemd when it is ready, stopping and alive
//! ([`systemd`]), and draining in-flight requests on SIGTERM ([`drain`]).
//!
//! The order at start-up is: load and warm the model, spawn the engine, start the watchdog,
//! bind the listener, then `READY=1`. On SIGTERM: `STOPPING=1`, new generation requests get 503
//! with `Retry-After`, requests in flight finish within `--shutdown-timeout` or are aborted, and
//! the process exits 0.

pub(crate) mod drain;
pub(crate) mod systemd;
