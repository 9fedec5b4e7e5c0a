//! The KV cache manager: prefix-cache lookups, slot allocation, caching and freeing.
//!
//! The KV cache manager (vLLM's `kv_cache_manager.py`): prefix-cache lookups, slot allocation
//! for the tokens a step will compute, caching of blocks as they fill, and freeing.

use super::block_hash::{extend_hashes, BlockHash};
use super::block_pool::BlockPool;
use super::BlockId;

/// One request's blocks (its block table) and the hashes of its full blocks.
#[derive(Debug, Default, Clone)]
pub struct RequestBlocks {
    pub blocks: Vec<BlockId>,
    hashes: Vec<BlockHash>,
    /// Leading blocks already registered in the prefix cache.
    num_cached_blocks: usize,
}

impl RequestBlocks {
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// A prefix-cache hit: blocks holding the request's first `num_tokens` tokens.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PrefixHit {
    pub blocks: Vec<BlockId>,
    pub num_tokens: usize,
}

/// The paged KV cache's bookkeeping: each request's blocks, the prefix cache, the free pool.
#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
}

impl KvCacheManager {
    /// A cache of `num_blocks` blocks of `block_size` tokens, with or without prefix caching.
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> KvCacheManager {
        KvCacheManager {
            pool: BlockPool::new(num_blocks),
            block_size,
            enable_caching,
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The block pool.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Tokens the whole cache holds (every block but the null block).
    pub fn capacity_tokens(&self) -> usize {
        (self.pool.num_blocks() - 1) * self.block_size
    }

    /// Fraction of usable blocks referenced by requests (`vllm:kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    /// The longest cached prefix of `tokens`, in whole blocks, capped at `tokens.len() - 1` so
    /// the last token is always computed (its logits are needed).
    pub fn get_computed_blocks(&self, req: &mut RequestBlocks, tokens: &[u32]) -> PrefixHit {
        if !self.enable_caching || tokens.is_empty() {
            return PrefixHit::default();
        }
        extend_hashes(&mut req.hashes, tokens, self.block_size);
        let max_blocks = (tokens.len() - 1) / self.block_size;
        let blocks: Vec<BlockId> = req.hashes[..max_blocks.min(req.hashes.len())]
            .iter()
            .map_while(|h| self.pool.cached_block(h))
            .collect();
        PrefixHit {
            num_tokens: blocks.len() * self.block_size,
            blocks,
        }
    }

    /// Makes room for `num_new` more tokens of a request that has `num_computed` tokens in its
    /// blocks (plus `hit`, for a request being admitted), out of its `tokens` so far. Caches
    /// every block that will be full. Returns `false`, changing nothing, when the pool is short.
    pub fn allocate_slots(
        &mut self,
        req: &mut RequestBlocks,
        tokens: &[u32],
        num_computed: usize,
        num_new: usize,
        hit: &PrefixHit,
    ) -> bool {
        let total = num_computed + hit.num_tokens + num_new;
        let have = req.blocks.len() + hit.blocks.len();
        let needed = total.div_ceil(self.block_size).saturating_sub(have);
        // Hit blocks nobody references sit in the free queue; touching them uses them up.
        let hit_free = hit
            .blocks
            .iter()
            .filter(|b| self.pool.ref_cnt(**b) == 0)
            .count();
        if needed + hit_free > self.pool.num_free() {
            return false;
        }
        self.pool.touch(&hit.blocks);
        req.blocks.extend_from_slice(&hit.blocks);
        req.blocks
            .extend(self.pool.allocate(needed).expect("checked above"));
        if self.enable_caching {
            let cacheable = total.min(tokens.len());
            extend_hashes(&mut req.hashes, &tokens[..cacheable], self.block_size);
            let full = cacheable / self.block_size;
            for i in req.num_cached_blocks..full {
                self.pool.cache(req.blocks[i], req.hashes[i]);
            }
            req.num_cached_blocks = req.num_cached_blocks.max(full);
        }
        true
    }

    /// Returns a request's blocks, tail first, so its prefix is evicted last.
    pub fn free(&mut self, req: &mut RequestBlocks) {
        self.pool.free(req.blocks.drain(..).rev());
        req.num_cached_blocks = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hits_are_block_aligned_and_leave_the_last_token() {
        let mut m = KvCacheManager::new(16, 4, true);
        let prompt: Vec<u32> = (0..8).collect();
        let mut a = RequestBlocks::default();
        let hit = m.get_computed_blocks(&mut a, &prompt);
        assert_eq!(hit, PrefixHit::default());
        assert!(m.allocate_slots(&mut a, &prompt, 0, 8, &hit));
        assert_eq!(a.blocks.len(), 2);
        // Same 8 tokens: only the first block hits (the 8th token must be computed).
        let mut b = RequestBlocks::default();
        let hit = m.get_computed_blocks(&mut b, &prompt);
        assert_eq!(hit.num_tokens, 4);
        assert_eq!(hit.blocks, a.blocks[..1]);
        // One more token: both blocks hit.
        let longer: Vec<u32> = (0..9).collect();
        let mut c = RequestBlocks::default();
        let hit = m.get_computed_blocks(&mut c, &longer);
        assert_eq!(hit.blocks, a.blocks);
        assert!(m.allocate_slots(&mut c, &longer, 0, 1, &hit));
        assert_eq!(c.blocks[..2], a.blocks[..]);
        assert_eq!(m.pool().ref_cnt(a.blocks[0]), 2);
        m.free(&mut a);
        m.free(&mut c);
        assert_eq!(m.pool().num_free(), 15);
    }

    #[test]
    fn caching_off_never_hits() {
        let mut m = KvCacheManager::new(8, 2, false);
        let t: Vec<u32> = (0..5).collect();
        let mut a = RequestBlocks::default();
        assert!(m.allocate_slots(&mut a, &t, 0, 5, &PrefixHit::default()));
        let mut b = RequestBlocks::default();
        assert_eq!(m.get_computed_blocks(&mut b, &t), PrefixHit::default());
        assert_eq!(m.pool().num_cached(), 0);
    }

    #[test]
    fn short_pool_refuses_without_side_effects() {
        let mut m = KvCacheManager::new(4, 2, true);
        let t: Vec<u32> = (0..8).collect();
        let mut a = RequestBlocks::default();
        assert!(!m.allocate_slots(&mut a, &t, 0, 8, &PrefixHit::default()));
        assert!(a.is_empty());
        assert_eq!(m.pool().num_free(), 3);
        assert!(m.allocate_slots(&mut a, &t, 0, 6, &PrefixHit::default()));
        assert_eq!(m.usage(), 1.0);
    }

    /// Any mix of admissions, growth and frees leaves the pool whole once every request is gone.
    #[test]
    fn random_workloads_never_leak_blocks() {
        let mut state = 99u64;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        let mut m = KvCacheManager::new(40, 4, true);
        let mut live: Vec<(RequestBlocks, Vec<u32>, usize)> = Vec::new();
        for _ in 0..5000 {
            match rand(4) {
                0 | 1 if live.len() < 12 => {
                    // Shared prefixes make hits common.
                    let len = 1 + rand(20);
                    let prefix = rand(3) as u32;
                    let tokens: Vec<u32> = (0..len as u32)
                        .map(|i| if i < 8 { prefix * 100 + i } else { 1000 + i })
                        .collect();
                    let mut req = RequestBlocks::default();
                    let hit = m.get_computed_blocks(&mut req, &tokens);
                    let n = tokens.len() - hit.num_tokens;
                    if m.allocate_slots(&mut req, &tokens, 0, n, &hit) {
                        live.push((req, tokens, hit.num_tokens + n));
                    }
                }
                2 if !live.is_empty() => {
                    let i = rand(live.len() as u64);
                    let (req, tokens, computed) = &mut live[i];
                    tokens.push(7);
                    if m.allocate_slots(req, tokens, *computed, 1, &PrefixHit::default()) {
                        *computed += 1;
                    } else {
                        tokens.pop();
                    }
                }
                _ if !live.is_empty() => {
                    let i = rand(live.len() as u64);
                    let (mut req, _, _) = live.swap_remove(i);
                    m.free(&mut req);
                }
                _ => {}
            }
            let referenced: usize = live.iter().map(|(r, _, _)| r.blocks.len()).sum();
            assert!(
                referenced >= 40 - 1 - m.pool().num_free(),
                "shared blocks are counted once in the pool"
            );
        }
        for (mut req, _, _) in live.drain(..) {
            m.free(&mut req);
        }
        assert_eq!(m.pool().num_free(), 39);
        assert_eq!(m.pool().free_queue().len(), 39);
        assert!((1..40).all(|b| m.pool().ref_cnt(b) == 0));
    }
}
