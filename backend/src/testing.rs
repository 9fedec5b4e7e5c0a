//! A scripted backend for the tests of the engine loop and the server.
//!
//! A scripted backend for the tests of the layers above it (the engine loop, the server): no
//! model, rows of logits that always prefer one token, and the failures and delays those tests
//! provoke on purpose. Built with the `testing` feature, which only dev-dependencies turn on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::LlamaConfig;

use crate::heartbeat::Heartbeat;
use crate::{Backend, BackendError, KvGeometry, Logits, SeqInput, StepTiming};

/// What a [`FakeBackend`] does once its successful steps are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Refuses the step with a [`BackendError`], as a device error would.
    Error,
    /// Panics, as a bug would.
    Panic,
}

/// A backend that computes nothing: each row of logits is zero but for the preferred token.
pub struct FakeBackend {
    config: LlamaConfig,
    geometry: KvGeometry,
    /// The token every row prefers, with a logit of 10 (the others 0); none: all-zero rows.
    preferred: Option<u32>,
    /// Steps that succeed before `failure` happens; none: every step succeeds.
    ok_steps: Option<usize>,
    failure: Failure,
    /// How long a step takes, and whether it beats the heartbeat (every 20 ms) meanwhile.
    step: Duration,
    beats: bool,
    heartbeat: Option<Arc<Heartbeat>>,
    /// What the engine loop asked of it, when logged: `forward <LogitsFor of each sequence>`,
    /// `timing`, `idle`.
    log: Option<Arc<Mutex<Vec<String>>>>,
}

impl FakeBackend {
    /// A backend over `config` with a cache of `num_blocks` blocks of `block_size` tokens whose
    /// steps succeed at once with all-zero logits.
    pub fn new(config: LlamaConfig, block_size: usize, num_blocks: usize) -> FakeBackend {
        FakeBackend {
            config,
            geometry: KvGeometry {
                block_size,
                num_blocks,
            },
            preferred: None,
            ok_steps: None,
            failure: Failure::Error,
            step: Duration::ZERO,
            beats: false,
            heartbeat: None,
            log: None,
        }
    }

    /// Every row prefers `token`.
    pub fn preferring(mut self, token: u32) -> FakeBackend {
        self.preferred = Some(token);
        self
    }

    /// Steps after the first `ok_steps` fail with a [`BackendError`].
    pub fn failing_after(mut self, ok_steps: usize) -> FakeBackend {
        self.ok_steps = Some(ok_steps);
        self.failure = Failure::Error;
        self
    }

    /// Every step panics.
    pub fn panicking(mut self) -> FakeBackend {
        self.ok_steps = Some(0);
        self.failure = Failure::Panic;
        self
    }

    /// Each step takes `step`; with `beats`, it beats the engine's heartbeat as it goes.
    pub fn taking(mut self, step: Duration, beats: bool) -> FakeBackend {
        self.step = step;
        self.beats = beats;
        self
    }

    /// Logs each call into `log`, and reports a device timing (300 µs busy) after each step.
    pub fn logging_to(mut self, log: Arc<Mutex<Vec<String>>>) -> FakeBackend {
        self.log = Some(log);
        self
    }

    fn note(&self, what: String) {
        if let Some(log) = &self.log {
            log.lock().expect("the log's lock").push(what);
        }
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn kv_geometry(&self) -> KvGeometry {
        self.geometry
    }

    fn beat_while_working(&mut self, heartbeat: Arc<Heartbeat>) {
        self.heartbeat = Some(heartbeat);
    }

    fn forward(&mut self, batch: &[SeqInput<'_>]) -> Result<Logits, BackendError> {
        let kinds: Vec<String> = batch
            .iter()
            .map(|s| format!("{:?}", s.logits_for))
            .collect();
        self.note(format!("forward {}", kinds.join(",")));
        match self.ok_steps {
            Some(0) if self.failure == Failure::Panic => panic!("backend bug"),
            Some(0) => {
                return Err(BackendError::TokenOutOfVocab {
                    seq: 0,
                    token: u32::MAX,
                    vocab: self.config.vocab_size,
                })
            }
            Some(ref mut n) => *n -= 1,
            None => {}
        }
        let started = Instant::now();
        while started.elapsed() < self.step {
            std::thread::sleep(Duration::from_millis(20));
            if let (true, Some(h)) = (self.beats, &self.heartbeat) {
                h.beat();
            }
        }
        let vocab = self.config.vocab_size;
        let rows: usize = batch
            .iter()
            .map(|s| s.logits_for.positions(s.tokens.len()))
            .sum();
        let mut data = vec![0f32; rows * vocab];
        if let Some(token) = self.preferred {
            for row in data.chunks_mut(vocab) {
                row[token as usize] = 10.0;
            }
        }
        Ok(Logits::from_rows(batch, vocab, data))
    }

    fn take_step_timing(&mut self) -> Option<StepTiming> {
        self.log.as_ref()?;
        self.note("timing".into());
        Some(StepTiming {
            busy: Duration::from_micros(300),
            gap: None,
        })
    }

    fn idle(&mut self) {
        if let Some(log) = &self.log {
            let mut log = log.lock().expect("the log's lock");
            if log.last().map(String::as_str) != Some("idle") {
                log.push("idle".into());
            }
        }
    }
}
