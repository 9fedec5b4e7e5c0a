//! CPU-bound work of requests (parsing large bodies, chat templates, tokenization) runs here,
//! on a few dedicated threads, never on the async workers that answer `/health`, `/metrics`
//! and every stream: one client's megabytes of prompt queue for a CPU thread instead of
//! freezing the server.
//!
//! The threads run at a lower scheduling priority (nice +10) than the engine and the async
//! workers. On a machine with few cores the bulk work of one client still competes with the
//! engine's steps for the same CPUs; at a lower priority the kernel's scheduler gives the
//! engine its time first, so a running stream's next token is not delayed by someone else's
//! tokenization.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

/// How much nicer than the rest of the process the pool's threads are.
const NICENESS: i32 = 10;

pub struct CpuPool {
    jobs: mpsc::Sender<Job>,
}

impl CpuPool {
    /// `threads` dedicated threads (at least 1); jobs beyond them wait their turn.
    pub fn new(threads: usize) -> CpuPool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("vigil-cpu-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        // The lock is held only to take a job, never while running one.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    }
                })
                .expect("spawning a CPU pool thread");
        }
        CpuPool { jobs }
    }

    /// Half the machine's CPUs (at least one): the rest stay for the engine and the server.
    pub fn for_this_host() -> CpuPool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuPool::new(cpus / 2)
    }

    /// Runs `job` on a pool thread once one is free. A job that panics answers an error; the
    /// thread lives on.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = answer.send(result);
        });
        self.jobs
            .send(job)
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        match answered.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(ApiError::unavailable("a request's CPU work failed")),
            Err(_) => Err(ApiError::unavailable("the server is shutting down")),
        }
    }
}

/// Raises the calling thread's nice value (on Linux, priority is per thread). Failure only
/// costs the preference, so it is ignored.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // that thread's nice value.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, now.saturating_add(NICENESS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_its_threads_run_at_once() {
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

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_lives_on() {
        let pool = CpuPool::new(1);
        assert!(pool.run(|| panic!("a bad job")).await.is_err());
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_threads_are_nicer_than_the_caller() {
        fn nice_of_this_thread() -> i32 {
            // SAFETY: as above; getpriority only reads.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::getpriority(libc::PRIO_PROCESS, tid)
            }
        }
        let pool = CpuPool::new(1);
        let caller = nice_of_this_thread();
        let worker = pool.run(nice_of_this_thread).await.unwrap();
        assert_eq!(worker, (caller + NICENESS).min(19));
    }
}
