//! Vigil's engine core: what turns requests into tokens, with no HTTP or device code of its own.
//!
//! Vigil's engine core: what turns requests into tokens, with no HTTP, no tracing export and no
//! device code of its own. One thread (`engine_loop`) owns the [`Scheduler`] and the
//! [`Executor`]; each step is schedule -> execute -> update -> record, as vLLM v1's engine core
//! runs it:
//!
//! - `scheduler`: which requests compute how many tokens (token budget, chunked prefill,
//!   preemption by recompute), and what becomes of the sampled tokens (stops, lengths).
//! - `kv_cache`: the paged KV cache's blocks and the prefix cache.
//! - `executor`: the backend (from the `backend` crate) and every request's sampler.
//! - `sampling`: penalties, temperature, top-k/top-p/min-p, seeded draws, log-probabilities.
//! - `metrics`: the `vllm:` engine series, recorded from each step's output.

mod engine_loop;
mod executor;
mod kv_cache;
mod launch;
mod metrics;
mod sampling;
mod scheduler;
mod structured;

pub use engine_loop::{
    event_channel, spawn, EngineHandle, EngineStopped, Event, Finished, NewRequest, EVENT_BUFFER,
};
pub use executor::Executor;
pub use kv_cache::manager::KvCacheManager;
pub use launch::{load, Device, Engine, EngineConfig, LoadedModel, DEFAULT_MODEL};
pub use metrics::EngineMetrics;
pub use sampling::{argmax, Sampled, Sampler, SamplingParams};
pub use scheduler::request::Timestamps;
pub use scheduler::{FinishReason, RequestError, Scheduler, SchedulerConfig, StopReason};
pub use structured::{
    CompiledConstraint, ConstraintSpec, Grammars, ObjectDefault, COMPILE_STACK_BYTES,
};
