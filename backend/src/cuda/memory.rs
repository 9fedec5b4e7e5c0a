//! How many KV blocks fit on the device, sized as vLLM sizes them.
//!
//! How many KV blocks fit on the device, as vLLM sizes them: `--gpu-memory-utilization` of the
//! device's total memory is the engine's budget; the weights and the peak activations of a step
//! come out of it, and the rest is KV cache. The budget must be free when the engine starts (other
//! processes' memory is not ours to plan with). The numbers go to the log and to
//! `vllm:cache_config_info`.

/// The device memory a plan was made from, and what it left for the KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPlan {
    /// `--gpu-memory-utilization` × total memory.
    pub budget: u64,
    pub kv_bytes: u64,
    pub num_blocks: usize,
}

const GIB: f64 = (1u64 << 30) as f64;

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Plans the KV cache. `block_bytes` is one block of K and V for every layer.
pub(crate) fn plan_kv_cache(
    total: u64,
    free: u64,
    utilization: f64,
    weights: u64,
    activations: u64,
    block_bytes: u64,
) -> Result<KvPlan, String> {
    assert!(block_bytes > 0, "a KV block has a size");
    let budget = (total as f64 * utilization) as u64;
    if free < budget {
        return Err(format!(
            "--gpu-memory-utilization {utilization} asks for {} of the device's {}, but only {} is \
             free: lower it, or free the GPU",
            gib(budget),
            gib(total),
            gib(free)
        ));
    }
    let kv_bytes = budget
        .checked_sub(weights)
        .and_then(|left| left.checked_sub(activations))
        .ok_or_else(|| {
            format!(
                "the weights ({}) and a step's activations ({}) do not fit in \
                 --gpu-memory-utilization {utilization} of the device ({}): raise it, or lower \
                 --max-num-batched-tokens",
                gib(weights),
                gib(activations),
                gib(budget)
            )
        })?;
    let num_blocks = (kv_bytes / block_bytes) as usize;
    if num_blocks < 2 {
        return Err(format!(
            "{} left for the KV cache holds {num_blocks} block(s) of {} bytes; at least 2 are needed",
            gib(kv_bytes),
            block_bytes
        ));
    }
    Ok(KvPlan {
        budget,
        kv_bytes,
        num_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    #[test]
    fn the_kv_cache_gets_what_the_budget_leaves_after_weights_and_activations() {
        // An 80 GiB H100 at 0.9: 72 GiB budget; 16 GiB of weights, 2 GiB of activations.
        let plan = plan_kv_cache(80 * GB, 79 * GB, 0.9, 16 * GB, 2 * GB, 2 * 1024 * 1024).unwrap();
        assert_eq!(plan.budget, 72 * GB);
        assert_eq!(plan.kv_bytes, 54 * GB);
        assert_eq!(plan.num_blocks, 54 * 512);
    }

    #[test]
    fn a_budget_larger_than_the_free_memory_is_refused_with_the_numbers() {
        let err = plan_kv_cache(80 * GB, 40 * GB, 0.9, GB, GB, 1024).unwrap_err();
        assert!(
            err.contains("--gpu-memory-utilization 0.9 asks for 72.00 GiB"),
            "{err}"
        );
        assert!(err.contains("only 40.00 GiB is free"), "{err}");
    }

    #[test]
    fn weights_that_do_not_fit_are_refused() {
        let err = plan_kv_cache(24 * GB, 24 * GB, 0.5, 14 * GB, GB, 1024).unwrap_err();
        assert!(err.contains("the weights (14.00 GiB)"), "{err}");
        let err = plan_kv_cache(24 * GB, 24 * GB, 0.5, 12 * GB - 1024, 0, 1024).unwrap_err();
        assert!(err.contains("holds 1 block(s)"), "{err}");
    }
}
