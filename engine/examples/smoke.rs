use engine::backend::cpu::{CpuBackend, CpuOptions, WeightFormat};
use engine::backend::{Backend, LogitsFor, SeqInput};
use engine::model::Model;

fn main() {
    let t0 = std::time::Instant::now();
    let model = Model::load(std::path::Path::new(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ))
    .unwrap();
    println!("{:?}", model.config);
    let mut be = CpuBackend::new(
        &model,
        &CpuOptions {
            block_size: 16,
            num_blocks: 64,
            weight_format: WeightFormat::F32,
        },
    )
    .unwrap();
    println!("loaded in {:?}", t0.elapsed());
    let prompt = model
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    println!("prompt ids {prompt:?}");
    let table: Vec<u32> = (0..64).collect();
    let mut tokens = prompt.clone();
    let mut start = 0;
    let t1 = std::time::Instant::now();
    for _ in 0..20 {
        let logits = be
            .forward(&[SeqInput {
                tokens: &tokens[start..],
                start_pos: start,
                block_table: &table,
                logits_for: LogitsFor::Last,
            }])
            .unwrap();
        let row = logits.row(0);
        let next = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        start = tokens.len();
        tokens.push(next);
    }
    println!("gen in {:?}", t1.elapsed());
    println!("{}", model.tokenizer.decode(&tokens, false).unwrap());
}
