//! Sampler behaviour a user notices: greedy picks the argmax, a seed reproduces a run,
//! top-k/top-p never pick outside their set, the repetition penalty moves the choice,
//! log-probabilities are stable, and stop strings are caught across token boundaries.

use std::collections::HashSet;

use bitnet::sampler::{
    log_softmax, logprob, top_logprobs, Sampler, SamplerConfig, SamplerError, StopScan, StopStrings,
};

fn sampler(config: SamplerConfig) -> Sampler {
    Sampler::new(config).unwrap()
}

fn draws(config: SamplerConfig, logits: &[f32], count: usize) -> Vec<u32> {
    let mut sampler = sampler(config);
    (0..count)
        .map(|_| sampler.sample(logits, &[]).unwrap())
        .collect()
}

fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k,
        top_p,
        repetition_penalty: 1.0,
        repetition_last_n: 64,
        seed,
    }
}

#[test]
fn greedy_is_argmax_with_ties_to_the_lower_id() {
    let mut greedy = sampler(SamplerConfig::greedy());
    assert_eq!(greedy.sample(&[0.1, 3.0, -2.0, 2.9], &[]), Ok(1));
    assert_eq!(greedy.sample(&[1.0, 5.0, 5.0], &[]), Ok(1));
    assert_eq!(greedy.sample(&[f32::NAN, -1.0, f32::NAN], &[]), Ok(1));
    // Ordered as f32::total_cmp: +0 above -0; -inf and NaN only when nothing is finite.
    assert_eq!(greedy.sample(&[-0.0, 0.0, -1.0], &[]), Ok(1));
    assert_eq!(
        greedy.sample(&[f32::NEG_INFINITY, -3e38, f32::NAN], &[]),
        Ok(1)
    );
    assert_eq!(greedy.sample(&[f32::INFINITY, 1.0], &[]), Ok(0));
    assert!(greedy.sample(&[f32::NAN, f32::NEG_INFINITY], &[]).is_err());
}

/// The greedy shortcut (no penalty) and the candidate path (a penalty that changes nothing,
/// because no history) must agree on a whole vocabulary, including ties across SIMD lanes.
#[test]
fn greedy_gives_the_same_token_with_and_without_the_candidate_list() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        let logits: Vec<f32> = (0..1000 + round)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Few distinct values, so ties are common; some NaN.
                match state % 23 {
                    0 => f32::NAN,
                    v => (v % 9) as f32 - 4.0,
                }
            })
            .collect();
        let mut fast = sampler(SamplerConfig::greedy());
        let mut listed = sampler(SamplerConfig {
            repetition_penalty: 1.3,
            ..SamplerConfig::greedy()
        });
        assert_eq!(fast.sample(&logits, &[]), listed.sample(&logits, &[]));
    }
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
    let first = draws(sampling(1.0, 0, 1.0, 42), &logits, 64);
    let again = draws(sampling(1.0, 0, 1.0, 42), &logits, 64);
    let other = draws(sampling(1.0, 0, 1.0, 43), &logits, 64);
    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn samples_follow_the_softmax() {
    let logits = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
    let picks = draws(sampling(1.0, 0, 1.0, 7), &logits, 20_000);
    for (id, expected) in [0.7, 0.2, 0.1].into_iter().enumerate() {
        let share = picks.iter().filter(|&&p| p == id as u32).count() as f64 / 20_000.0;
        assert!((share - expected).abs() < 0.02, "token {id}: {share}");
    }
}

#[test]
fn top_k_and_top_p_restrict_the_support() {
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];

    let top_k: HashSet<u32> = draws(sampling(1.0, 2, 1.0, 1), &logits, 2000)
        .into_iter()
        .collect();
    assert_eq!(top_k, HashSet::from([0, 1]));

    // 0.5 < 0.75 <= 0.5 + 0.3: the nucleus is the two most likely tokens.
    let top_p: HashSet<u32> = draws(sampling(1.0, 0, 0.75, 1), &logits, 2000)
        .into_iter()
        .collect();
    assert_eq!(top_p, HashSet::from([0, 1]));

    let everything: HashSet<u32> = draws(sampling(1.0, 0, 1.0, 1), &logits, 2000)
        .into_iter()
        .collect();
    assert_eq!(everything.len(), 4);
}

#[test]
fn top_p_over_a_large_flat_vocabulary_keeps_most_of_it() {
    // A nucleus far wider than any shortlist: about 900 of 1000 equally likely tokens.
    let logits = vec![0.0f32; 1000];
    let picks: HashSet<u32> = draws(sampling(1.0, 0, 0.9, 3), &logits, 3000)
        .into_iter()
        .collect();
    assert!(picks.len() > 800, "{} distinct tokens", picks.len());
    assert!(picks.iter().all(|&id| id < 900), "ties keep the lower ids");

    // A peaked distribution: the nucleus is the three dominant tokens.
    let mut peaked = vec![-10.0f32; 1000];
    peaked[500] = 5.0;
    peaked[501] = 5.0;
    peaked[999] = 4.9;
    let picks: HashSet<u32> = draws(sampling(0.8, 0, 0.95, 3), &peaked, 500)
        .into_iter()
        .collect();
    assert_eq!(picks, HashSet::from([500, 501, 999]));
}

#[test]
fn repetition_penalty_changes_the_argmax_when_it_should() {
    let penalised = |penalty: f32, last_n: usize| {
        sampler(SamplerConfig {
            repetition_penalty: penalty,
            repetition_last_n: last_n,
            ..SamplerConfig::greedy()
        })
    };
    // Positive logits are divided: 2.0 / 1.2 = 1.67 < 1.9.
    assert_eq!(
        penalised(1.2, 64).sample(&[2.0, 1.9, -1.0], &[0, 0, 0]),
        Ok(1)
    );
    // Only a little too weak: 2.0 / 1.05 = 1.905 > 1.9.
    assert_eq!(penalised(1.05, 64).sample(&[2.0, 1.9, -1.0], &[0]), Ok(0));
    // Negative logits are multiplied: -0.5 * 1.2 = -0.6 < -0.55.
    assert_eq!(penalised(1.2, 64).sample(&[-0.5, -0.55], &[0]), Ok(1));
    // Only the last n tokens count.
    assert_eq!(
        penalised(1.2, 2).sample(&[2.0, 1.9, -1.0], &[0, 2, 2]),
        Ok(0)
    );
    // Off at 1.0.
    assert_eq!(penalised(1.0, 64).sample(&[2.0, 1.9], &[0]), Ok(0));
}

#[test]
fn bad_configs_and_logits_are_refused() {
    let refused = |config: SamplerConfig, field: &str| {
        let error = Sampler::new(config).err().unwrap();
        assert!(error.to_string().starts_with(field), "{error}");
    };
    refused(sampling(-0.5, 0, 1.0, 0), "temperature = -0.5");
    refused(sampling(f32::NAN, 0, 1.0, 0), "temperature = NaN");
    refused(sampling(1.0, 0, 0.0, 0), "top_p = 0");
    refused(sampling(1.0, 0, 1.5, 0), "top_p = 1.5");
    refused(
        SamplerConfig {
            repetition_penalty: 0.0,
            ..SamplerConfig::default()
        },
        "repetition_penalty = 0",
    );

    let mut sampler = sampler(SamplerConfig::default());
    assert_eq!(sampler.sample(&[], &[]), Err(SamplerError::EmptyLogits));
    assert_eq!(
        sampler.sample(&[f32::NAN, f32::NEG_INFINITY], &[]),
        Err(SamplerError::NoFiniteLogit { count: 2 })
    );
}

#[test]
fn log_probabilities_are_stable_and_normalised() {
    let logits = [1000.0f32, 0.0, 999.0];
    let log_probs = log_softmax(&logits).unwrap();
    let total: f64 = log_probs.iter().map(|&l| f64::from(l).exp()).sum();
    assert!((total - 1.0).abs() < 1e-6);
    assert!((log_probs[0] - (-(1.0 + (-1.0f32).exp()).ln())).abs() < 1e-5);
    assert!((log_probs[1] + 1000.313).abs() < 1e-2);
    assert_eq!(logprob(&logits, 2).unwrap(), log_probs[2]);
    assert_eq!(
        logprob(&logits, 3),
        Err(SamplerError::TokenOutOfRange {
            id: 3,
            vocab_size: 3
        })
    );
    assert_eq!(log_softmax(&[]), Err(SamplerError::EmptyLogits));

    let top = top_logprobs(&logits, 2).unwrap();
    assert_eq!(top, vec![(0, log_probs[0]), (2, log_probs[2])]);
}

#[test]
fn stop_strings_are_found_across_token_boundaries() {
    let mut stops = StopStrings::new(vec!["World".into(), "\nUser:".into()]).unwrap();
    let continued = |text: &str| StopScan::Continue { text: text.into() };
    assert_eq!(stops.push("Hello W"), continued("Hello "));
    assert_eq!(stops.push("or"), continued(""));
    assert_eq!(
        stops.push("ld! more"),
        StopScan::Stopped {
            text: String::new(),
            stop_index: 0
        }
    );

    // A false start is released as soon as it cannot be a stop string any more.
    let mut stops = StopStrings::new(vec!["World".into(), "\nUser:".into()]).unwrap();
    assert_eq!(stops.push("Wo"), continued(""));
    assert_eq!(stops.push("nder\n"), continued("Wonder"));
    assert_eq!(
        stops.push("Use"),
        continued(""),
        "\"\\nUse\" may still become \"\\nUser:\""
    );
    assert_eq!(
        stops.push("r: hi"),
        StopScan::Stopped {
            text: String::new(),
            stop_index: 1
        }
    );

    // Multi-byte stop strings, and text still held when generation ends by itself.
    let mut stops = StopStrings::new(vec!["日本".into()]).unwrap();
    assert_eq!(stops.push("こんにちは日"), continued("こんにちは"));
    assert_eq!(stops.finish(), "日");

    assert_eq!(
        StopStrings::new(vec!["ok".into(), String::new()]).err(),
        Some(SamplerError::EmptyStopString { index: 1 })
    );
}
