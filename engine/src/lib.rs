//! Vigil's engine core: what turns requests into tokens, with no HTTP, no tracing export and no
//! device code of its own. One thread ([`engine_loop`]) owns the [`Scheduler`] and the
//! [`Executor`]; each step is schedule -> execute -> update -> record, as vLLM v1's engine core
//! runs it:
//!
//! - [`scheduler`]: which requests compute how many tokens (token budget, chunked prefill,
//!   preemption by recompute), and what becomes of the sampled tokens (stops, lengths).
//! - [`kv_cache`]: the paged KV cache's blocks and the prefix cache.
//! - [`executor`]: the backend (from the `backend` crate) and every request's sampler.
//! - [`sampling`]: penalties, temperature, top-k/top-p/min-p, seeded draws, log-probabilities.
//! - [`metrics`]: the `vllm:` engine series, recorded from each step's output.

pub mod engine_loop;
pub mod executor;
pub mod kv_cache;
pub mod launch;
pub mod metrics;
pub mod sampling;
pub mod scheduler;
pub mod structured;

pub use engine_loop::{
    event_channel, spawn, EngineHandle, EngineStopped, Event, Finished, NewRequest, EVENT_BUFFER,
};
pub use executor::Executor;
pub use scheduler::{Scheduler, SchedulerConfig};
