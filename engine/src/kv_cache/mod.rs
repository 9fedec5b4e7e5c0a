//! The paged KV cache's bookkeeping, after vLLM v1.
//!
//! The paged KV cache's bookkeeping, after vLLM v1: a [`block_pool::BlockPool`] of fixed-size
//! blocks with reference counts, an LRU free queue and a prefix cache keyed by chained block
//! hashes ([`block_hash`]), and the [`manager::KvCacheManager`] the scheduler asks for prefix
//! hits and slots. The tensors themselves live in the backend; this module only decides which
//! block holds which tokens.

pub(crate) mod block_hash;
pub(crate) mod block_pool;
pub(crate) mod manager;

/// Index of a block in the backend's KV cache.
pub(crate) type BlockId = u32;
