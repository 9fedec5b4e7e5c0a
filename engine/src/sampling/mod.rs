//! Sampling (to come in this next step).
