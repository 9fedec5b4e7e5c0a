//! The engine thread: the one owner of the scheduler, the backend and the metrics handles.
//!
//! HTTP handlers talk to it over a command channel, and each request has its own event channel
//! back. A request whose event channel closes (the client went away) is aborted at the next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use crate::executor::Executor;
use crate::metrics::EngineMetrics;
use crate::sampling::{Sampled, SamplingParams};
use crate::scheduler::request::Timestamps;
use crate::scheduler::{FinishReason, Request, Scheduler, StepOutcome, StopReason};
use backend::Backend;
pub(crate) use backend::Heartbeat;
use model::Detokenizer;

/// A request for the engine.
pub struct NewRequest {
    /// The request's id, as the API reports it.
    pub id: String,
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// How to sample.
    pub params: SamplingParams,
    /// Tokens to generate at most (already capped by the context length).
    pub max_tokens: usize,
    /// The client request (one prompt of it) this is a choice of, and how many choices it
    /// has: its `n` and its longest choice are recorded when the last choice finishes (vLLM's
    /// `ParentRequest.observe_finished_request`).
    pub parent: String,
    /// How many choices (`n`): each is its own sequence.
    pub n: usize,
    /// When the request arrived (for queue and end-to-end latencies).
    pub arrival: Instant,
    /// The request's trace id when tracing is on (for the exemplars on /metrics).
    pub trace_id: Option<String>,
    /// Turns the output into text and ends the request at a stop string (none: no text, as
    /// for token-only clients and tests).
    pub detokenizer: Option<Detokenizer>,
    /// Report the prompt tokens' log-probabilities, with this many alternatives each.
    pub prompt_logprobs: Option<usize>,
    /// Bounded by [`EVENT_BUFFER`]: a client that stops reading cannot make the engine hold
    /// its output without end.
    pub events: Sender<Event>,
}

/// Events a request may leave unread (tokens its client has not taken) before the engine aborts
/// it as a client that stopped reading: memory per request stays bounded.
pub const EVENT_BUFFER: usize = 1024;

/// A channel for a request's events.
pub fn event_channel() -> (Sender<Event>, tokio::sync::mpsc::Receiver<Event>) {
    tokio::sync::mpsc::channel(EVENT_BUFFER)
}

/// What a request's handler hears back: a token per step, then one [`Finished`].
#[derive(Debug)]
pub enum Event {
    /// Log-probabilities of prompt tokens (positions 1.. in order, over one or more events,
    /// before the first token), when asked for.
    PromptLogprobs(Vec<Sampled>),
    /// A token of a request that goes on, with the text it released.
    Token {
        /// The token drawn, with its log-probabilities.
        sampled: Sampled,
        /// The text it completes (held back while a stop string may still match).
        text: String,
    },
    /// The choice ended.
    Finished(Box<Finished>),
}

/// The end of a request, with everything its response, its usage and its trace need.
#[derive(Debug)]
pub struct Finished {
    /// The token sampled in the step that finished it (none for an abort between steps).
    pub last: Option<Sampled>,
    /// The rest of the output text.
    pub text: String,
    /// Why it ended.
    pub reason: FinishReason,
    /// The stop token or string that ended it, if one did.
    pub stop_reason: Option<StopReason>,
    /// With [`FinishReason::Error`]: why, when the engine can say (a request the cache can
    /// never hold, a constraint that failed mid-answer).
    pub error: Option<crate::scheduler::RequestError>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens the prefix cache served.
    pub cached_tokens: usize,
    /// When it was queued, scheduled, and made its first and last tokens (for its trace).
    pub times: Timestamps,
}

enum Command {
    Add(Box<NewRequest>),
    AbortAll,
}

/// How often an idle engine loop wakes to beat (a busy one beats at every step).
pub(crate) const IDLE_BEAT: Duration = Duration::from_millis(250);

/// The handlers' side of the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    alive: Arc<AtomicBool>,
    heartbeat: Arc<Heartbeat>,
}

/// The engine thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineStopped;

impl EngineHandle {
    /// Hands `req` to the engine thread.
    pub fn submit(&self, req: NewRequest) -> Result<(), EngineStopped> {
        self.tx
            .send(Command::Add(Box::new(req)))
            .map_err(|_| EngineStopped)
    }

    /// Whether the engine thread is still running (false once it has exited or panicked).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// When the engine loop last went round.
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// Aborts every request the engine holds (the end of a drain's grace period).
    pub fn abort_all(&self) {
        let _ = self.tx.send(Command::AbortAll);
    }
}

/// Where a running request's events go: its handler's channel, the detokenizer that turns its
/// tokens into text, and the client request (of `n` choices) it belongs to.
struct RequestSink {
    events: Sender<Event>,
    detokenizer: Option<Detokenizer>,
    parent: String,
}

/// A client request's choices still running, and the most tokens one of them made.
struct ClientRequest {
    n: usize,
    remaining: usize,
    max_generated: usize,
}

fn is_full<T>(sent: Result<(), TrySendError<T>>) -> bool {
    matches!(sent, Err(TrySendError::Full(_)))
}

/// Starts the engine thread (named `vigil-engine`, so probes can tell it apart).
pub fn spawn(
    backend: Box<dyn Backend>,
    mut scheduler: Scheduler,
    metrics: Option<EngineMetrics>,
) -> EngineHandle {
    let (tx, rx) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    /// Marks the engine dead when the thread ends, by return or by panic.
    struct Liveness(Arc<AtomicBool>);
    impl Drop for Liveness {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
            if std::thread::panicking() {
                tracing::error!("the engine thread panicked; /health now reports it");
            }
        }
    }
    let liveness = Liveness(Arc::clone(&alive));
    let heartbeat = Arc::new(Heartbeat::new());
    let beats = Arc::clone(&heartbeat);
    let mut executor = Executor::new(backend);
    // A long step that is moving beats too: it is not a wedged loop.
    executor.beat_while_working(Arc::clone(&heartbeat));
    std::thread::Builder::new()
        .name("vigil-engine".into())
        .spawn(move || {
            let mut core = EngineLoop {
                scheduler: &mut scheduler,
                metrics,
                sinks: HashMap::new(),
                parents: HashMap::new(),
                heartbeat: beats,
            };
            // Declared after `core`, so dropped before it: the engine reads as dead before the
            // requests' channels close, and a handler that sees its channel close finds it so.
            let _liveness = liveness;
            core.run(&mut executor, rx);
        })
        .expect("spawn the engine thread");
    EngineHandle {
        tx,
        alive,
        heartbeat,
    }
}

/// The engine thread's state: the scheduler, the metrics, and where each request's events go.
struct EngineLoop<'a> {
    scheduler: &'a mut Scheduler,
    metrics: Option<EngineMetrics>,
    /// Where each running request's events go.
    sinks: HashMap<String, RequestSink>,
    parents: HashMap<String, ClientRequest>,
    heartbeat: Arc<Heartbeat>,
}

impl EngineLoop<'_> {
    /// The engine loop: schedule -> execute -> update -> record, then the events.
    fn run(&mut self, executor: &mut Executor, rx: mpsc::Receiver<Command>) {
        loop {
            self.heartbeat.beat();
            if !self.scheduler.has_work() {
                executor.idle();
                match rx.recv_timeout(IDLE_BEAT) {
                    Ok(cmd) => self.handle(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            let gone: Vec<String> = self
                .sinks
                .iter()
                .filter(|(_, m)| m.events.is_closed())
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                self.finish(&id, FinishReason::Abort);
            }
            if !self.scheduler.has_work() {
                // Idle: make the gauges say so (a step would have).
                self.record_state();
                continue;
            }
            let step = self.scheduler.schedule();
            // Even a step with nothing to compute goes to the executor: it carries the ids of
            // requests that finished, whose samplers it drops.
            match executor.execute(&step) {
                Ok(result) => {
                    let out = self.scheduler.update_from_output(&step, result);
                    // Metrics first, then events: a client that has its answer finds it counted.
                    if let Some(m) = &self.metrics {
                        for u in &out.updates {
                            let trace = u.trace_id.as_deref();
                            if let Some(first) = &u.first_token {
                                m.record_first_token(&u.id, trace, first);
                            }
                            if let Some(d) = u.inter_token {
                                m.record_inter_token(&u.id, trace, d.as_secs_f64());
                            }
                        }
                        m.record_step(&out.stats);
                        if let Some(timing) = executor.take_step_timing() {
                            m.record_device_step(timing);
                        }
                        if let Some(masks) = executor.take_mask_time() {
                            m.record_mask_time(masks.as_secs_f64());
                        }
                    }
                    self.record_state();
                    self.emit(out);
                }
                Err(err) => {
                    // The backend refused the batch, or the step broke the executor's
                    // contract: a bug. Fail every request rather than loop on it.
                    tracing::error!(%err, "engine step failed; failing every request");
                    self.finish_all(FinishReason::Error);
                }
            }
        }
    }

    /// Turns a step's tokens into text and events (vLLM's output processor): a stop string
    /// ends its request here, before the next step, and a finished request's last token
    /// travels in its [`Finished`] event.
    fn emit(&mut self, out: StepOutcome) {
        let mut finished = out.finished;
        // Requests whose client left a full buffer unread: aborted after this step's events.
        let mut unread = Vec::new();
        for u in out.updates {
            let Some(meta) = self.sinks.get_mut(&u.id) else {
                continue;
            };
            if !u.prompt_logprobs.is_empty()
                && is_full(
                    meta.events
                        .try_send(Event::PromptLogprobs(u.prompt_logprobs)),
                )
            {
                unread.push(u.id.clone());
            }
            let Some(sampled) = u.token else { continue };
            let stop = meta
                .detokenizer
                .as_mut()
                .and_then(|d| d.update(sampled.token));
            if let Some(stop) = stop {
                // A stop string ends the request (and outranks a length finish, as in vLLM).
                let req = match finished.iter().position(|(r, _)| r.id == u.id) {
                    Some(i) => Some(finished.swap_remove(i).0),
                    None => self.scheduler.abort(&u.id),
                };
                if let Some(mut req) = req {
                    req.stop_reason = Some(StopReason::Text(stop));
                    self.retire(&req, FinishReason::Stop, Some(sampled));
                }
            } else if let Some(i) = finished.iter().position(|(r, _)| r.id == u.id) {
                let (req, reason) = finished.swap_remove(i);
                self.retire(&req, reason, Some(sampled));
            } else {
                let text = meta
                    .detokenizer
                    .as_mut()
                    .map(|d| d.take_delta(false))
                    .unwrap_or_default();
                if is_full(meta.events.try_send(Event::Token { sampled, text })) {
                    unread.push(u.id.clone());
                }
            }
        }
        for (req, reason) in finished {
            self.retire(&req, reason, None);
        }
        for id in unread {
            tracing::warn!(
                request_id = %id,
                unread = EVENT_BUFFER,
                "aborting a request whose client stopped reading"
            );
            if let Some(m) = &self.metrics {
                m.record_slow_client_abort();
            }
            self.finish(&id, FinishReason::Abort);
        }
    }

    /// Scheduler state gauges.
    fn record_state(&self) {
        if let Some(m) = &self.metrics {
            let s = &self.scheduler;
            m.record_state(s.num_running(), s.num_waiting(), s.kv().usage());
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Add(r) => {
                let mut req =
                    Request::new(r.id.clone(), r.prompt, r.max_tokens, r.params, r.arrival);
                req.trace_id = r.trace_id;
                req.prompt_logprobs = r.prompt_logprobs;
                self.sinks.insert(
                    r.id,
                    RequestSink {
                        events: r.events,
                        detokenizer: r.detokenizer,
                        parent: r.parent.clone(),
                    },
                );
                self.parents.entry(r.parent).or_insert(ClientRequest {
                    n: r.n,
                    remaining: r.n,
                    max_generated: 0,
                });
                self.scheduler.add(req);
            }
            Command::AbortAll => self.finish_all(FinishReason::Abort),
        }
    }

    fn finish_all(&mut self, reason: FinishReason) {
        let ids: Vec<String> = self.scheduler.request_ids().map(str::to_owned).collect();
        for id in ids {
            self.finish(&id, reason);
        }
    }

    fn finish(&mut self, id: &str, reason: FinishReason) {
        if let Some(req) = self.scheduler.abort(id) {
            self.retire(&req, reason, None);
        }
    }

    /// Records a finished request and tells its handler; `last` is the token its final step
    /// sampled.
    fn retire(&mut self, req: &Request, reason: FinishReason, last: Option<Sampled>) {
        let Some(mut meta) = self.sinks.remove(&req.id) else {
            return;
        };
        let parent_done = match self.parents.get_mut(&meta.parent) {
            Some(p) => {
                p.remaining = p.remaining.saturating_sub(1);
                p.max_generated = p.max_generated.max(req.num_output_tokens());
                p.remaining == 0
            }
            None => false,
        };
        let parent = if parent_done {
            self.parents.remove(&meta.parent)
        } else {
            None
        };
        if let Some(m) = &self.metrics {
            m.record_finished(req, reason);
            if let Some(p) = parent {
                m.record_parent_finished(p.n, p.max_generated);
            }
        }
        let text = meta
            .detokenizer
            .as_mut()
            .map(|d| d.take_delta(true))
            .unwrap_or_default();
        // A client that stopped reading may miss this; it is gone or aborted either way.
        let _ = meta.events.try_send(Event::Finished(Box::new(Finished {
            last,
            text,
            reason,
            stop_reason: req.stop_reason.clone(),
            error: req.error.clone(),
            prompt_tokens: req.prompt_len,
            completion_tokens: req.num_output_tokens(),
            cached_tokens: req.num_cached_tokens.unwrap_or(0),
            times: req.times,
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::manager::KvCacheManager;
    use crate::scheduler::SchedulerConfig;
    use backend::testing::FakeBackend;

    /// A greedy request with the defaults tests do not care about.
    fn greedy_request(
        id: &str,
        prompt: Vec<u32>,
        max_tokens: usize,
        events: Sender<Event>,
    ) -> NewRequest {
        NewRequest {
            id: id.into(),
            prompt,
            params: SamplingParams::greedy(),
            max_tokens,
            parent: id.into(),
            n: 1,
            arrival: Instant::now(),
            trace_id: None,
            detokenizer: None,
            prompt_logprobs: None,
            events,
        }
    }

    #[test]
    fn a_panicking_engine_reports_itself_dead_and_drops_its_requests() {
        let config = model::testing::tiny_config();
        let cfg = SchedulerConfig {
            max_num_batched_tokens: 64,
            max_num_seqs: 4,
            max_model_len: 64,
            chunked_prefill: true,
        };
        let scheduler = Scheduler::new(cfg, KvCacheManager::new(8, 4, true), vec![]);
        let engine = spawn(
            Box::new(FakeBackend::new(config, 4, 8).panicking()),
            scheduler,
            None,
        );
        assert!(engine.is_alive());
        let (tx, mut rx) = event_channel();
        engine
            .submit(greedy_request("r", vec![1, 2, 3], 4, tx))
            .unwrap();
        // The request's channel closes without an event: its handler learns the engine is gone.
        assert!(rx.blocking_recv().is_none());
        assert!(!engine.is_alive());
        assert!(engine.submit_is_refused());
    }

    /// The engine loop tells the backend when it goes idle (so a device backend does not count
    /// the wait for requests as a host gap), takes each step's device timing, and a greedy
    /// request's steps ask for [`LogitsFor::Greedy`] rows.
    #[test]
    fn the_engine_loop_reports_idleness_and_takes_each_steps_timing() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let backend = FakeBackend::new(model::testing::tiny_config(), 4, 8)
            .preferring(5)
            .logging_to(Arc::clone(&log));
        let cfg = SchedulerConfig {
            max_num_batched_tokens: 64,
            max_num_seqs: 4,
            max_model_len: 64,
            chunked_prefill: true,
        };
        let scheduler = Scheduler::new(cfg, KvCacheManager::new(8, 4, true), vec![]);
        let metrics = Some(crate::metrics::EngineMetrics::new("m", "0"));
        let engine = spawn(Box::new(backend), scheduler, metrics);
        std::thread::sleep(Duration::from_millis(50));
        let (tx, mut rx) = event_channel();
        engine
            .submit(greedy_request("r", vec![1, 2, 3], 3, tx))
            .unwrap();
        let mut tokens = Vec::new();
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Token { sampled, .. } => tokens.push(sampled.token),
                Event::PromptLogprobs(_) => panic!("not asked for"),
                Event::Finished(f) => {
                    tokens.extend(f.last.map(|s| s.token));
                    break;
                }
            }
        }
        assert_eq!(tokens, [5, 5, 5]);
        std::thread::sleep(Duration::from_millis(50));
        let log = log.lock().unwrap().clone();
        let step = ["forward Greedy", "timing"];
        let want: Vec<&str> = std::iter::once("idle")
            .chain(step.iter().copied().cycle().take(6))
            .chain(std::iter::once("idle"))
            .collect();
        assert_eq!(log, want);
    }

    /// The watchdog's signal: a step that beats as it works keeps the heartbeat young however
    /// long it takes; one stuck without progress lets it age (and the watchdog is withheld).
    #[test]
    fn a_moving_step_keeps_the_heartbeat_young_and_a_stuck_one_does_not() {
        for beats in [true, false] {
            let backend = FakeBackend::new(model::testing::tiny_config(), 4, 8)
                .taking(Duration::from_millis(800), beats);
            let cfg = SchedulerConfig {
                max_num_batched_tokens: 64,
                max_num_seqs: 4,
                max_model_len: 64,
                chunked_prefill: true,
            };
            let scheduler = Scheduler::new(cfg, KvCacheManager::new(8, 4, true), vec![]);
            let engine = spawn(Box::new(backend), scheduler, None);
            let (tx, _rx) = event_channel();
            engine
                .submit(greedy_request("r", vec![1, 2, 3], 1, tx))
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let age = engine.heartbeat().age();
            if beats {
                assert!(age < Duration::from_millis(200), "moving: {age:?}");
            } else {
                assert!(age >= Duration::from_millis(300), "stuck: {age:?}");
            }
            // The systemd watchdog (600 ms here) is fed only while the last beat is younger
            // than half its period (the server's `lifecycle::systemd::tick`).
            assert_eq!(age < Duration::from_millis(600) / 2, beats, "{age:?}");
        }
    }

    /// A client that stops reading its stream: once it has left [`EVENT_BUFFER`] events unread
    /// the engine aborts its request (memory per request stays bounded) and goes on serving
    /// the others.
    #[test]
    fn a_request_whose_client_stops_reading_is_aborted_at_the_bound() {
        let backend = FakeBackend::new(model::testing::tiny_config(), 4, 8);
        let cfg = SchedulerConfig {
            max_num_batched_tokens: 64,
            max_num_seqs: 4,
            max_model_len: 4096,
            chunked_prefill: true,
        };
        let scheduler = Scheduler::new(cfg, KvCacheManager::new(1200, 4, true), vec![]);
        let engine = spawn(Box::new(backend), scheduler, None);
        let (tx, mut unread) = event_channel();
        let mut silent = greedy_request("silent", vec![1, 2, 3], 3000, tx);
        silent.params.ignore_eos = true;
        engine.submit(silent).unwrap();
        // Another request is served meanwhile, and after.
        std::thread::sleep(Duration::from_millis(300));
        let (tx, mut rx) = event_channel();
        engine
            .submit(greedy_request("read", vec![4, 5], 3, tx))
            .unwrap();
        let mut got = 0;
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Token { .. } => got += 1,
                Event::Finished(f) => {
                    got += usize::from(f.last.is_some());
                    break;
                }
                Event::PromptLogprobs(_) => {}
            }
        }
        assert_eq!(got, 3);
        // The silent one holds exactly the bound, and the engine let go of it.
        let mut buffered = 0;
        while let Some(event) = unread.blocking_recv() {
            assert!(matches!(event, Event::Token { .. }), "{event:?}");
            buffered += 1;
        }
        assert_eq!(buffered, EVENT_BUFFER);
    }

    impl EngineHandle {
        fn submit_is_refused(&self) -> bool {
            let (tx, _rx) = event_channel();
            self.submit(greedy_request("late", vec![1], 1, tx)).is_err()
        }
    }
}
