//! CPU-bound work of requests (parsing large bodies, chat templates, tokenization) runs here,
//! on blocking threads, a bounded number at a time, never on the async workers that answer
//! `/health`, `/metrics` and every stream: one client's megabytes of prompt queue for a CPU
//! thread instead of freezing the server.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::error::ApiError;

pub struct CpuPool {
    permits: Arc<Semaphore>,
}

impl CpuPool {
    /// At most `threads` jobs at once (at least 1).
    pub fn new(threads: usize) -> CpuPool {
        CpuPool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Half the machine's CPUs (at least one): the rest stay for the engine and the server.
    pub fn for_this_host() -> CpuPool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuPool::new(cpus / 2)
    }

    /// Runs `job` on a blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ApiError::unavailable(format!("a request's CPU work failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_its_slots_run_at_once() {
        let pool = Arc::new(CpuPool::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
