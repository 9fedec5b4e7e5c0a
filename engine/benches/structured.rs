//! What structured outputs cost at decode, with and without a JSON-schema constraint.
//!
//! The cost of structured outputs at decode: batch-8 decode on the default model (CPU backend),
//! every sequence sampled through its `Sampler`, with and without a JSON-schema constraint, in
//! alternating rounds of the same run. Prints one JSON object: tokens/s of each, their ratio,
//! and the mean mask time per constrained token.
//!
//! Usage: cargo bench -p vigil-engine --bench structured [-- MODEL]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Backend, LogitsFor, SeqInput};
use backend::{CpuBackend, CpuOptions, WeightFormat};
use engine::{ConstraintSpec, Grammars};
use engine::{Sampler, SamplingParams};
use model::{ChatMessage, Model};

const BLOCK: usize = 16;
const BATCH: usize = 8;
const STEPS: usize = 48;
const ROUNDS: usize = 4;
/// Room in the cache for the chat-templated prompt.
const MAX_PROMPT: usize = 64;

fn main() {
    let path = common::model_path();
    let model = Model::load(&path).expect("load model");
    let vocab_size = model.config.vocab_size;
    let blocks_per = (MAX_PROMPT + STEPS + 1).div_ceil(BLOCK);
    let mut be = CpuBackend::new(
        &model,
        &CpuOptions {
            block_size: BLOCK,
            num_blocks: BATCH * blocks_per + 1,
            weight_format: WeightFormat::default(),
            kv_dtype: None,
        },
    )
    .expect("backend");
    let tokenizer = Arc::new(model.tokenizer);
    let grammars = Grammars::new(Arc::clone(&tokenizer), vocab_size, Default::default()).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer"},
            "role": {"enum": ["engineer", "doctor", "artist"]},
            "address": {"type": "object", "properties": {"city": {"type": "string"},
                        "zip": {"type": "string"}}, "required": ["city", "zip"]},
            "skills": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["name", "age", "role", "address", "skills"]
    });
    let compiled = grammars
        .compile(&ConstraintSpec::JsonSchema(schema))
        .unwrap();
    let prompt_text = tokenizer
        .apply_chat_template(
            &[ChatMessage::new("user", "Describe a person as JSON.")],
            true,
        )
        .unwrap();
    let prompt = tokenizer.encode(&prompt_text, false).unwrap();
    assert!(prompt.len() <= MAX_PROMPT, "{} prompt tokens", prompt.len());
    let tables: Vec<Vec<u32>> = (0..BATCH)
        .map(|s| ((s * blocks_per + 1) as u32..((s + 1) * blocks_per + 1) as u32).collect())
        .collect();

    let mut run = |constrained: bool| -> (Duration, Duration, usize) {
        let mut samplers: Vec<Sampler> = (0..BATCH)
            .map(|s| {
                let params = SamplingParams {
                    temperature: 1.0,
                    seed: Some(s as u64),
                    structured: constrained.then(|| compiled.clone()),
                    ..SamplingParams::default()
                };
                Sampler::new(params, &prompt)
            })
            .collect();
        let mut seqs: Vec<Vec<u32>> = vec![prompt.clone(); BATCH];
        let step = |be: &mut CpuBackend, seqs: &[Vec<u32>], first: bool| {
            let inputs: Vec<SeqInput> = (0..BATCH)
                .map(|s| SeqInput {
                    tokens: if first {
                        &seqs[s]
                    } else {
                        &seqs[s][seqs[s].len() - 1..]
                    },
                    start_pos: if first { 0 } else { seqs[s].len() - 1 },
                    block_table: &tables[s],
                    logits_for: LogitsFor::Last,
                })
                .collect();
            be.forward(&inputs).unwrap()
        };
        let logits = step(&mut be, &seqs, true);
        for (s, seq) in seqs.iter_mut().enumerate() {
            seq.push(samplers[s].sample(logits.row(s)).token);
        }
        for s in &mut samplers {
            s.take_mask_time();
        }
        let started = Instant::now();
        for _ in 0..STEPS {
            let logits = step(&mut be, &seqs, false);
            for (s, seq) in seqs.iter_mut().enumerate() {
                seq.push(samplers[s].sample(logits.row(s)).token);
            }
        }
        let elapsed = started.elapsed();
        let masks: Duration = samplers.iter_mut().map(Sampler::take_mask_time).sum();
        (elapsed, masks, BATCH * STEPS)
    };

    let (mut free, mut held, mut masks, mut tokens) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
    run(false); // warm-up
    for _ in 0..ROUNDS {
        let (t, _, n) = run(false);
        free += t;
        let (t, m, _) = run(true);
        held += t;
        masks += m;
        tokens += n;
    }
    let free_tps = tokens as f64 / free.as_secs_f64();
    let held_tps = tokens as f64 / held.as_secs_f64();
    println!(
        "{{\"batch\": {BATCH}, \"decode_tok_s\": {free_tps:.1}, \"decode_json_schema_tok_s\": {held_tps:.1}, \"ratio\": {:.3}, \"mask_us_per_token\": {:.1}}}",
        held_tps / free_tps,
        masks.as_secs_f64() * 1e6 / tokens as f64
    );
}
