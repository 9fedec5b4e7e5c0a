//! The sampler against vLLM's definitions of each parameter.

use super::*;

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams {
        seed: Some(7),
        ..Default::default()
    };
    f(&mut p);
    p
}

const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, -1.0, 2.5];

#[test]
fn greedy_is_argmax_whatever_the_seed() {
    for seed in 0..5 {
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.seed = Some(seed)
            }),
            &[],
        );
        assert_eq!(s.sample(&LOGITS).token, 1);
    }
    assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
}

#[test]
fn seeds_reproduce_and_differ() {
    let run = |seed| {
        let mut s = Sampler::new(params(|p| p.seed = Some(seed)), &[]);
        (0..40).map(|_| s.sample(&LOGITS).token).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn draws_follow_softmax_with_temperature() {
    let t = 0.7f32;
    let mut s = Sampler::new(params(|p| p.temperature = t), &[]);
    let n = 40_000;
    let mut counts = [0u32; 5];
    for _ in 0..n {
        counts[s.sample(&LOGITS).token as usize] += 1;
    }
    let z: f64 = LOGITS.iter().map(|l| ((*l / t) as f64).exp()).sum();
    for (i, l) in LOGITS.iter().enumerate() {
        let want = ((*l / t) as f64).exp() / z;
        let got = counts[i] as f64 / n as f64;
        // Five standard deviations of a binomial proportion.
        let tol = 5.0 * (want * (1.0 - want) / n as f64).sqrt() + 1e-4;
        assert!((got - want).abs() < tol, "token {i}: {got} vs {want}");
    }
}

#[test]
fn top_k_top_p_and_min_p_filter() {
    let draws = |p: SamplingParams| {
        let mut s = Sampler::new(p, &[]);
        let mut seen: Vec<u32> = (0..2000).map(|_| s.sample(&LOGITS).token).collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    };
    assert_eq!(draws(params(|p| p.top_k = Some(1))), vec![1]);
    assert_eq!(draws(params(|p| p.top_k = Some(2))), vec![1, 4]);
    // softmax(LOGITS): [0.061, 0.449, 0.165, 0.008, 0.272]; 0.449 + 0.272 = 0.721 >= 0.7.
    assert_eq!(draws(params(|p| p.top_p = 0.7)), vec![1, 4]);
    assert_eq!(draws(params(|p| p.top_p = 0.01)), vec![1]);
    // min_p 0.3: keep p >= 0.135, i.e. tokens 1, 2, 4.
    assert_eq!(draws(params(|p| p.min_p = 0.3)), vec![1, 2, 4]);
    assert_eq!(draws(params(|_| {})), vec![0, 1, 2, 3, 4]);
}

#[test]
fn penalties() {
    // Repetition: prompt token 1 (positive logit) is divided, token 3 (negative) multiplied.
    let mut s = Sampler::new(params(|p| p.repetition_penalty = 2.0), &[1, 3]);
    let mut x = LOGITS.to_vec();
    s.apply_penalties(&mut x);
    assert_eq!(x, vec![1.0, 1.5, 2.0, -2.0, 2.5]);
    // Frequency and presence: only generated tokens, per occurrence and once.
    s = Sampler::new(
        params(|p| {
            p.frequency_penalty = 0.5;
            p.presence_penalty = 0.25
        }),
        &[0],
    );
    s.observe(4);
    s.observe(4);
    s.observe(2);
    let mut x = LOGITS.to_vec();
    s.apply_penalties(&mut x);
    assert_eq!(x, vec![1.0, 3.0, 2.0 - 0.75, -1.0, 2.5 - 1.25]);
    // Greedy with a strong presence penalty moves off the repeated token.
    let mut s = Sampler::new(
        params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 2.0
        }),
        &[],
    );
    assert_eq!(s.sample(&LOGITS).token, 1);
    assert_eq!(s.sample(&LOGITS).token, 4);
}

#[test]
fn logprobs_are_raw_log_softmax() {
    let mut s = Sampler::new(
        params(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(3)
        }),
        &[],
    );
    let out = s.sample(&LOGITS);
    let lse = LOGITS.iter().map(|l| (*l as f64).exp()).sum::<f64>().ln();
    assert!((out.logprob as f64 - (3.0 - lse)).abs() < 1e-6);
    let ids: Vec<u32> = out.top_logprobs.iter().map(|t| t.0).collect();
    assert_eq!(ids, vec![1, 4, 2]);
    assert!((out.top_logprobs[1].1 as f64 - (2.5 - lse)).abs() < 1e-6);
}

#[test]
fn validation_names_the_field() {
    let bad = [
        params(|p| p.temperature = -1.0),
        params(|p| p.top_p = 0.0),
        params(|p| p.min_p = 1.5),
        params(|p| p.top_k = Some(0)),
        params(|p| p.repetition_penalty = 0.0),
        params(|p| p.presence_penalty = 3.0),
        params(|p| p.logprobs = Some(50)),
    ];
    let fields: Vec<&str> = bad
        .iter()
        .map(|p| p.validate().unwrap_err().field)
        .collect();
    assert_eq!(
        fields,
        [
            "temperature",
            "top_p",
            "min_p",
            "top_k",
            "repetition_penalty",
            "presence_penalty",
            "logprobs"
        ]
    );
    assert!(SamplingParams::default().validate().is_ok());
}

#[test]
fn stop_tokens() {
    let p = params(|p| p.stop_token_ids = vec![9]);
    assert_eq!(p.token_stop(2, &[2]), Some(TokenStop::Eos));
    assert_eq!(p.token_stop(9, &[2]), Some(TokenStop::StopTokenId));
    assert_eq!(p.token_stop(3, &[2]), None);
    let p = params(|p| {
        p.ignore_eos = true;
        p.stop_token_ids = vec![2];
    });
    // EOS ignored, but listed as a stop token id: it stops, with a stop reason (vLLM).
    assert_eq!(p.token_stop(2, &[2]), Some(TokenStop::StopTokenId));
    let p = params(|p| p.ignore_eos = true);
    assert_eq!(p.token_stop(2, &[2]), None);
}

/// Top-k and top-p keep what their definitions keep on a vocabulary-sized row: in order of
/// probability (ties to the lower id, here written as one full sort), the first `top_k`, cut
/// after the first token whose cumulative probability reaches `top_p`. The rows range from
/// peaked (a nucleus of a few tokens) to flat (tens of thousands), with ties.
#[test]
fn top_k_and_top_p_keep_their_definitions_on_a_whole_vocabulary() {
    let vocab = 49_152;
    for spread in [0.5f32, 4.0, 40.0] {
        // Quantized to a few hundred levels, so that many tokens tie.
        let x: Vec<f32> = (0..vocab)
            .map(|i| {
                let u = (i as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32;
                (u * 300.0).round() / 300.0 * spread
            })
            .collect();
        for (top_k, top_p) in [
            (None, 0.9f32),
            (None, 0.999),
            (Some(50), 1.0),
            (Some(5000), 0.95),
            (Some(1), 0.5),
            (None, 1e-9),
        ] {
            let (mut probs, mut order) = (Vec::new(), Vec::new());
            super::filtered_probs(&x, (top_k, top_p, 0.0), &mut probs, &mut order);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = x.iter().map(|v| ((v - max) as f64).exp()).collect();
            let total: f64 = e.iter().sum();
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|a, b| e[*b].total_cmp(&e[*a]).then(a.cmp(b)));
            let mut want: Vec<usize> = Vec::new();
            let mut cum = 0.0;
            for &i in order.iter().take(top_k.unwrap_or(vocab)) {
                want.push(i);
                cum += e[i] / total;
                if cum >= top_p as f64 {
                    break;
                }
            }
            want.sort_unstable();
            let kept: Vec<usize> = (0..vocab).filter(|i| probs[*i] > 0.0).collect();
            assert_eq!(kept, want, "spread {spread} top_k {top_k:?} top_p {top_p}");
        }
    }
}
