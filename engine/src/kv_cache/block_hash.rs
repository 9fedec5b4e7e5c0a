//! Chained hashes of full blocks of tokens: equal hashes mean equal prefixes.
//!
//! Chained hashes of full blocks of tokens: a block's hash covers its tokens and, through its
//! parent's hash, every token before it, so equal hashes mean equal prefixes (SHA-256, as vLLM's
//! default `--prefix-caching-hash-algo`).

use sha2::{Digest, Sha256};

/// The hash of one full block and everything before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub [u8; 32]);

/// The parent hash of a sequence's first block.
const ROOT: BlockHash = BlockHash([0x5a; 32]);

/// Hashes of every full block of `tokens` (a trailing partial block has none).
#[cfg(test)]
pub(crate) fn hash_full_blocks(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut out = Vec::with_capacity(tokens.len() / block_size);
    extend_hashes(&mut out, tokens, block_size);
    out
}

/// Appends the hashes of the blocks of `tokens` that became full since `hashes` was computed.
pub(crate) fn extend_hashes(hashes: &mut Vec<BlockHash>, tokens: &[u32], block_size: usize) {
    let full = tokens.len() / block_size;
    for i in hashes.len()..full {
        let parent = if i == 0 { ROOT } else { hashes[i - 1] };
        let mut h = Sha256::new();
        h.update(parent.0);
        for t in &tokens[i * block_size..(i + 1) * block_size] {
            h.update(t.to_le_bytes());
        }
        hashes.push(BlockHash(h.finalize().into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_over_prefixes() {
        let a = hash_full_blocks(&[1, 2, 3, 4, 5, 6, 7], 2);
        assert_eq!(a.len(), 3);
        let b = hash_full_blocks(&[1, 2, 3, 4, 9, 9], 2);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        // The same block after a different prefix hashes differently.
        let c = hash_full_blocks(&[0, 0, 3, 4], 2);
        assert_ne!(a[1], c[1]);
        let mut d = hash_full_blocks(&[1, 2, 3], 2);
        extend_hashes(&mut d, &[1, 2, 3, 4, 5, 6, 7], 2);
        assert_eq!(d, a);
    }
}
