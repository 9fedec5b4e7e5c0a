//! Hardware probes for Vigil: the NVML poller and the eBPF scheduling-latency programs.
//!
//! Empty until the probes issue lands: the crate exists so the workspace has its final shape.
//! Each probe will degrade on its own (no GPU, no NVML, no BTF, no privilege), log why, and
//! report its state on `/metrics`.
