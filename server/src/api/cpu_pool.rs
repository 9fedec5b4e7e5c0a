//! A small pool of threads for requests' CPU-bound work, off the async workers.
//!
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

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exporter::catalog::service::CPU_POOL_JOBS;

use tokio::sync::oneshot;

use super::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

/// How much nicer than the rest of the process the pool's threads are.
const NICENESS: i32 = 10;

pub(crate) struct CpuPool {
    jobs: mpsc::Sender<Job>,
    /// The pool's `pool` label (`request`, `grammar`).
    name: &'static str,
}

/// A job's state, shared by the pool thread and the waiter of [`CpuPool::run_within`].
const WAITING: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Why [`CpuPool::run_within`] gave up on a job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Overdue {
    /// No thread had taken the job by the deadline; it will not run.
    NotStarted,
    /// The job was still running at the deadline (it runs to its end; its answer is dropped).
    Running,
}

impl CpuPool {
    /// `threads` dedicated threads (at least 1), named `vigil-<name>-<i>`, each with a stack
    /// of `stack_bytes`; jobs beyond them wait their turn.
    pub(crate) fn new(name: &'static str, threads: usize, stack_bytes: usize) -> CpuPool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("vigil-{name}-{i}"))
                .stack_size(stack_bytes)
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
        CpuPool { jobs, name }
    }

    /// The pool of requests' parsing, templates and tokenization: half the machine's CPUs (at
    /// least one), the rest staying for the engine and the server; Rust's default 2 MiB stacks.
    pub(crate) fn for_requests() -> CpuPool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuPool::new("request", cpus / 2, 2 << 20)
    }

    /// The pool of structured-output compiles, apart from [`CpuPool::for_requests`] so that a
    /// slow compile holds up only requests that have a constraint to compile: as many threads,
    /// with the stacks the compiler's bounded recursion needs.
    pub(crate) fn for_grammars() -> CpuPool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuPool::new("grammar", cpus / 2, engine::COMPILE_STACK_BYTES)
    }

    /// Runs `job` on a pool thread once one is free. A job that panics answers an error; the
    /// thread lives on.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        match self.run_within(Duration::MAX, job).await {
            Ok(answer) => answer,
            Err(_) => unreachable!("no deadline"),
        }
    }

    /// Runs `job` as [`CpuPool::run`] does, giving up at `deadline` after the call: a job no
    /// thread has taken by then is dropped unrun, and one still running is left to finish
    /// without anyone waiting for it.
    pub(crate) async fn run_within<T: Send + 'static>(
        &self,
        deadline: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, ApiError>, Overdue> {
        let (answer, answered) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let job_state = Arc::clone(&state);
        let pool = self.name;
        metrics::gauge!(CPU_POOL_JOBS.name, "pool" => pool, "state" => "waiting").increment(1.0);
        let job: Job = Box::new(move || {
            let started = job_state
                .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            metrics::gauge!(CPU_POOL_JOBS.name, "pool" => pool, "state" => "waiting")
                .decrement(1.0);
            if !started {
                return;
            }
            let running = metrics::gauge!(CPU_POOL_JOBS.name, "pool" => pool, "state" => "running");
            running.increment(1.0);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            running.decrement(1.0);
            let _ = answer.send(result);
        });
        if self.jobs.send(job).is_err() {
            metrics::gauge!(CPU_POOL_JOBS.name, "pool" => pool, "state" => "waiting")
                .decrement(1.0);
            return Ok(Err(ApiError::unavailable("the server is shutting down")));
        }
        let answered = match tokio::time::timeout(deadline, answered).await {
            Ok(answered) => answered,
            Err(_) => {
                let unstarted = state
                    .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                return Err(if unstarted {
                    Overdue::NotStarted
                } else {
                    Overdue::Running
                });
            }
        };
        Ok(match answered {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(ApiError::unavailable("a request's CPU work failed")),
            Err(_) => Err(ApiError::unavailable("the server is shutting down")),
        })
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
        let pool = Arc::new(CpuPool::new("test", 2, 2 << 20));
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
        let pool = CpuPool::new("test", 1, 2 << 20);
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
        let pool = CpuPool::new("test", 1, 2 << 20);
        let caller = nice_of_this_thread();
        let worker = pool.run(nice_of_this_thread).await.unwrap();
        assert_eq!(worker, (caller + NICENESS).min(19));
    }

    #[tokio::test]
    async fn a_job_past_its_deadline_is_dropped_unrun_or_left_running() {
        let pool = CpuPool::new("test", 1, 2 << 20);
        let ran = Arc::new(AtomicUsize::new(0));
        let (slow_ran, queued_ran) = (ran.clone(), ran.clone());
        let slow = pool.run_within(Duration::from_millis(50), move || {
            std::thread::sleep(Duration::from_millis(300));
            slow_ran.fetch_add(1, Ordering::SeqCst);
        });
        let queued = pool.run_within(Duration::from_millis(50), move || {
            queued_ran.fetch_add(10, Ordering::SeqCst);
        });
        let (slow, queued) = tokio::join!(slow, queued);
        assert_eq!(slow.unwrap_err(), Overdue::Running);
        assert_eq!(queued.unwrap_err(), Overdue::NotStarted);
        // The running job finished; the queued one never ran.
        assert_eq!(pool.run(|| 0).await.unwrap(), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn its_threads_have_the_stack_asked_for() {
        // Touches most of a 64 MiB stack, far past the default 2 MiB one.
        fn deep(levels: usize) -> usize {
            let frame = [levels as u8; 4096];
            if levels == 0 {
                return 0;
            }
            std::hint::black_box(&frame);
            1 + deep(levels - 1)
        }
        let pool = CpuPool::for_grammars();
        assert_eq!(pool.run(|| deep(10_000)).await.unwrap(), 10_000);
    }
}
