//! The block pool: reference-counted blocks, an LRU free queue and the prefix-cache map.
//!
//! The block pool (vLLM's `block_pool.py`): reference-counted blocks, a free queue in LRU order
//! that still holds evictable cached blocks, and the map from block hash to cached block.
//!
//! Block 0 is the null block: never handed out, never freed.

use std::collections::HashMap;

use super::block_hash::BlockHash;
use super::BlockId;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    hash: Option<BlockHash>,
    /// Links of the intrusive free queue (NIL when not in it).
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks (including the null block).
    pub fn new(num_blocks: usize) -> BlockPool {
        assert!(
            num_blocks >= 2,
            "a pool needs the null block and at least one more"
        );
        let blocks = (0..num_blocks)
            .map(|_| Block {
                ref_cnt: 0,
                hash: None,
                prev: NIL,
                next: NIL,
                in_free_queue: false,
            })
            .collect();
        let mut pool = BlockPool {
            blocks,
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: HashMap::new(),
        };
        pool.blocks[0].ref_cnt = 1;
        for id in 1..num_blocks as u32 {
            pool.push_back(id);
        }
        pool
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be allocated: unreferenced ones, cached or not.
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Fraction of usable blocks in use (vLLM's `kv_cache_usage`).
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free as f64 / (self.blocks.len() - 1) as f64
    }

    pub fn ref_cnt(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_cnt
    }

    /// The cached block holding the prefix that ends with `hash`.
    pub fn cached_block(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// Takes a reference on each of `ids` (prefix hits), taking unreferenced ones off the free
    /// queue.
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            if self.blocks[id as usize].ref_cnt == 0 {
                self.unlink(id);
            }
            self.blocks[id as usize].ref_cnt += 1;
        }
    }

    /// Allocates `n` blocks from the head of the free queue (least recently freed first),
    /// evicting their cached contents; `None` if fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            let block = &mut self.blocks[id as usize];
            if let Some(hash) = block.hash.take() {
                if self.cached.get(&hash) == Some(&id) {
                    self.cached.remove(&hash);
                }
            }
            block.ref_cnt = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Drops one reference on each of `ids`, in the order given (callers pass a request's blocks
    /// tail first, so its prefix stays cached longest). Unreferenced blocks join the free queue's
    /// tail, keeping their hash until reallocated.
    pub fn free(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        for id in ids {
            let block = &mut self.blocks[id as usize];
            assert!(
                id != 0 && block.ref_cnt > 0,
                "freeing block {id} with no reference"
            );
            block.ref_cnt -= 1;
            if block.ref_cnt == 0 {
                self.push_back(id);
            }
        }
    }

    /// Registers full block `id` as holding the prefix ending with `hash`. If another block
    /// already caches that prefix, it stays the cached one (blocks are not de-duplicated).
    pub fn cache(&mut self, id: BlockId, hash: BlockHash) {
        let block = &mut self.blocks[id as usize];
        if block.hash.is_none() {
            block.hash = Some(hash);
            self.cached.entry(hash).or_insert(id);
        }
    }

    /// Number of hashes in the prefix cache.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    fn push_back(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        debug_assert!(!b.in_free_queue);
        b.in_free_queue = true;
        b.prev = self.tail;
        b.next = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.blocks[self.tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.in_free_queue);
            b.in_free_queue = false;
            (
                std::mem::replace(&mut b.prev, NIL),
                std::mem::replace(&mut b.next, NIL),
            )
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        self.num_free -= 1;
    }

    /// The free queue from head to tail (tests and invariants).
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::new();
        let mut id = self.head;
        while id != NIL {
            out.push(id);
            id = self.blocks[id as usize].next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::block_hash::hash_full_blocks;

    #[test]
    fn allocate_free_and_lru_order() {
        let mut p = BlockPool::new(6);
        assert_eq!(p.num_free(), 5);
        assert_eq!(p.usage(), 0.0);
        let a = p.allocate(2).unwrap();
        assert_eq!(a, vec![1, 2]);
        let b = p.allocate(3).unwrap();
        assert_eq!(p.allocate(1), None);
        assert_eq!(p.usage(), 1.0);
        // Freed tail first: the free queue is LRU over release time.
        p.free(a.iter().rev().copied());
        p.free(b.iter().rev().copied());
        assert_eq!(p.free_queue(), vec![2, 1, 5, 4, 3]);
        assert_eq!(p.num_free(), 5);
    }

    #[test]
    fn cached_blocks_are_reused_until_evicted() {
        let mut p = BlockPool::new(4);
        let h = hash_full_blocks(&[1, 2, 3, 4], 2);
        let a = p.allocate(2).unwrap();
        p.cache(a[0], h[0]);
        p.cache(a[1], h[1]);
        p.free(a.iter().rev().copied());
        // Still cached while free: a hit takes them back off the free queue.
        assert_eq!(p.cached_block(&h[0]), Some(a[0]));
        p.touch(&[a[0]]);
        assert_eq!(p.ref_cnt(a[0]), 1);
        assert_eq!(p.num_free(), 2);
        // Allocating the remaining free blocks evicts the other cached one.
        let b = p.allocate(2).unwrap();
        assert!(b.contains(&a[1]));
        assert_eq!(p.cached_block(&h[1]), None);
        assert_eq!(p.cached_block(&h[0]), Some(a[0]));
        p.free([a[0]]);
        p.free(b);
        assert_eq!(p.num_free(), 3);
    }

    #[test]
    #[should_panic(expected = "no reference")]
    fn double_free_is_caught() {
        let mut p = BlockPool::new(3);
        let a = p.allocate(1).unwrap();
        p.free(a.clone());
        p.free(a);
    }
}
