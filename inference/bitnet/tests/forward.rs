//! End-to-end checks of the runtime on synthetic GGUF files written to disk: the optimised
//! forward pass against the f32 reference, the three ternary layouts against each other,
//! batched decoding against single-sequence decoding, and refusal of broken files.

use std::path::{Path, PathBuf};

use bitnet::generate::{SyntheticModel, SyntheticShape};
use bitnet::gguf::{GgufFile, GgufWriter, MetadataValue};
use bitnet::reference::ReferenceModel;
use bitnet::{
    BatchToken, FfnActivation, ForwardError, KvCache, LoadError, LoadOptions, LogitUse, Model,
    Scratch, Session, WeightFormat,
};

const FORMATS: [WeightFormat; 3] = [WeightFormat::I2S, WeightFormat::Tq2_0, WeightFormat::Tq1_0];
const GREEDY_STEPS: usize = 64;
/// Largest logit difference allowed between the optimised and reference passes, relative to
/// the largest logit. The passes differ in float summation order, which now and then moves an
/// activation across an int8 rounding boundary (one quantisation step, about 1/127 of the
/// token's largest value); such a step moves logits by well under 1%.
const MAX_RELATIVE_DIFF: f32 = 1e-2;
/// The typical (median) step must agree to float precision: a real bug (wrong RoPE pairing,
/// missing norm, wrong scale) shifts every step by far more.
const MEDIAN_RELATIVE_DIFF: f32 = 1e-5;

fn write(dir: &Path, model: &SyntheticModel, name: &str) -> PathBuf {
    let path = dir.join(name);
    model.write(&path).unwrap();
    path
}

fn options(threads: usize) -> LoadOptions {
    LoadOptions {
        int8_output: false,
        threads,
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The tiny synthetic model in `format` with weights from `seed`, loaded with 2 threads; keep
/// the directory alive while the model is used.
fn tiny_model(format: WeightFormat, seed: u64) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &SyntheticModel::tiny(format, seed), "m.gguf");
    let model = Model::load(&path, options(2)).unwrap();
    (dir, model)
}

/// Greedy decoding with the optimised pass, one token per call after a prompt.
fn greedy(model: &Model, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut session = Session::new(model, prompt.len() + steps).unwrap();
    let mut next = argmax(session.feed(prompt).unwrap());
    let mut out = vec![next];
    while out.len() < steps {
        next = argmax(session.feed(&[next]).unwrap());
        out.push(next);
    }
    out
}

#[test]
fn optimised_pass_matches_the_f32_reference_in_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for format in FORMATS {
        let path = write(dir.path(), &SyntheticModel::tiny(format, 11), "m.gguf");
        let model = Model::load(&path, options(2)).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let reference = ReferenceModel::from_gguf(&file).unwrap();
        let mut session = Session::new(&model, GREEDY_STEPS + 1).unwrap();
        let mut ref_session = reference.session();
        let mut token = model
            .gguf()
            .get("tokenizer.ggml.bos_token_id")
            .unwrap()
            .as_u64()
            .unwrap() as u32;
        let mut relative_diffs = Vec::new();
        for step in 0..GREEDY_STEPS {
            let fast = session.feed(&[token]).unwrap().to_vec();
            let slow = ref_session.step(token);
            let range = slow.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = fast
                .iter()
                .zip(&slow)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let relative = diff / range;
            assert!(
                relative <= MAX_RELATIVE_DIFF,
                "{format}: step {step} logits differ by {diff} (largest logit {range})"
            );
            relative_diffs.push(relative);
            let (a, b) = (argmax(&fast), argmax(&slow));
            assert_eq!(a, b, "{format}: step {step} greedy tokens differ");
            token = a;
        }
        relative_diffs.sort_by(f32::total_cmp);
        let median = relative_diffs[GREEDY_STEPS / 2];
        assert!(
            median <= MEDIAN_RELATIVE_DIFF,
            "{format}: median relative logit difference {median} is too large"
        );
        eprintln!(
            "{format}: relative logit difference over {GREEDY_STEPS} steps: median {median:e}, worst {:e}",
            relative_diffs[GREEDY_STEPS - 1]
        );
    }
}
#[test]
fn the_same_weights_in_i2s_tq2_and_tq1_give_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = [5u32, 300, 17, 42, 99, 260];
    let runs: Vec<Vec<u32>> = FORMATS
        .iter()
        .map(|&format| {
            let path = write(dir.path(), &SyntheticModel::tiny(format, 3), "m.gguf");
            let model = Model::load(&path, options(1)).unwrap();
            assert_eq!(model.weight_format(), format);
            greedy(&model, &prompt, GREEDY_STEPS)
        })
        .collect();
    assert_eq!(runs[0], runs[1], "I2_S and TQ2_0 disagree");
    assert_eq!(runs[0], runs[2], "I2_S and TQ1_0 disagree");
    let distinct: std::collections::HashSet<_> = runs[0].iter().collect();
    assert!(
        distinct.len() > 3,
        "a degenerate model would make this test meaningless: {:?}",
        runs[0]
    );
}

#[test]
fn batched_decode_of_three_sequences_equals_each_alone() {
    let (_dir, model) = tiny_model(WeightFormat::I2S, 5);
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4], &[400, 7], &[9, 9, 9, 100, 200, 300, 8]];
    let steps = 12;
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&model, p, steps)).collect();

    let mut cache = KvCache::new(&model, 3, 64).unwrap();
    let mut scratch = Scratch::new();
    let slots: Vec<_> = (0..3).map(|_| cache.allocate().unwrap()).collect();
    assert!(cache.allocate().is_none());
    // Prefill all three prompts in one batch, asking only for each last token's logits.
    let mut batch = Vec::new();
    for (slot, prompt) in slots.iter().zip(prompts) {
        for (pos, &token) in prompt.iter().enumerate() {
            batch.push(BatchToken {
                slot: *slot,
                token,
                pos,
                logits: pos + 1 == prompt.len(),
            });
        }
    }
    let logits = model.forward(&mut cache, &mut scratch, &batch).unwrap();
    let vocab = model.vocab_size();
    assert_eq!(logits.len(), 3 * vocab);
    let mut last: Vec<u32> = logits.chunks(vocab).map(argmax).collect();
    let mut together: Vec<Vec<u32>> = last.iter().map(|&t| vec![t]).collect();
    for _ in 1..steps {
        let batch: Vec<BatchToken> = slots
            .iter()
            .zip(&last)
            .map(|(&slot, &token)| BatchToken {
                slot,
                token,
                pos: cache.len(slot),
                logits: true,
            })
            .collect();
        let logits = model.forward(&mut cache, &mut scratch, &batch).unwrap();
        last = logits.chunks(vocab).map(argmax).collect();
        for (seq, &t) in together.iter_mut().zip(&last) {
            seq.push(t);
        }
    }
    assert_eq!(together, alone);

    // A freed slot is reused from scratch and gives the same answer again.
    cache.free(slots[1]);
    let again = cache.allocate().unwrap();
    assert_eq!(cache.len(again), 0);
    let batch: Vec<BatchToken> = prompts[1]
        .iter()
        .enumerate()
        .map(|(pos, &token)| BatchToken {
            slot: again,
            token,
            pos,
            logits: pos + 1 == prompts[1].len(),
        })
        .collect();
    let logits = model.forward(&mut cache, &mut scratch, &batch).unwrap();
    assert_eq!(argmax(logits), alone[1][0]);
}

/// Whether this CPU runs the output layer's exact-argmax product (AVX-512 BF16, default kernels).
fn has_exact_argmax_product() -> bool {
    #[cfg(target_arch = "x86_64")]
    let has = std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    has && std::env::var("TERNARY_KERNEL").map_or(true, |k| k.trim().is_empty())
}

#[test]
fn greedy_decoding_with_argmax_only_logits_picks_the_same_tokens() {
    let (_dir, model) = tiny_model(WeightFormat::Tq2_0, 21);
    let vocab = model.vocab_size();
    // Twelve sequences: batches this large take the BF16 pass where the CPU has one.
    let sequences = 12;
    let decode = |usage: LogitUse| {
        let mut cache = KvCache::new(&model, sequences, 80).unwrap();
        let mut scratch = Scratch::new();
        let slots: Vec<_> = (0..sequences).map(|_| cache.allocate().unwrap()).collect();
        let mut last: Vec<u32> = (0..sequences as u32).map(|i| 3 + 37 * i).collect();
        let (mut tokens, mut approximated) = (Vec::new(), 0);
        for pos in 0..GREEDY_STEPS {
            let batch: Vec<BatchToken> = slots
                .iter()
                .zip(&last)
                .map(|(&slot, &token)| BatchToken {
                    slot,
                    token,
                    pos,
                    logits: true,
                })
                .collect();
            let logits = model
                .forward_for(&mut cache, &mut scratch, &batch, usage)
                .unwrap()
                .to_vec();
            if usage == LogitUse::Argmax {
                // The same step again with every logit (it rewrites the same cache entries).
                let full = model.forward(&mut cache, &mut scratch, &batch).unwrap();
                approximated += logits.iter().zip(full).filter(|(a, b)| a != b).count();
            }
            last = logits.chunks(vocab).map(argmax).collect();
            tokens.push(last.clone());
        }
        (tokens, approximated)
    };
    let (full, _) = decode(LogitUse::Any);
    let (argmax_only, approximated) = decode(LogitUse::Argmax);
    assert_eq!(argmax_only, full);
    if has_exact_argmax_product() {
        assert!(
            approximated > 0,
            "the BF16 pass ran, so most logits are approximations"
        );
    }
}

#[test]
fn prefill_in_one_batch_equals_token_by_token() {
    let (_dir, model) = tiny_model(WeightFormat::Tq2_0, 8);
    let prompt = [10u32, 20, 30, 40, 50, 60, 70, 80, 90];
    let mut batched = Session::new(&model, 16).unwrap();
    let at_once = batched.feed(&prompt).unwrap().to_vec();
    let mut single = Session::new(&model, 16).unwrap();
    let mut one_by_one = Vec::new();
    for &t in &prompt {
        one_by_one = single.feed(&[t]).unwrap().to_vec();
    }
    let diff = at_once
        .iter()
        .zip(&one_by_one)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-3, "prefill differs from step-by-step by {diff}");
    assert_eq!(batched.position(), prompt.len());
}

#[test]
fn invalid_batches_are_refused_with_the_entry_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &SyntheticModel::tiny(WeightFormat::I2S, 2),
        "m.gguf",
    );
    let model = Model::load(&path, options(1)).unwrap();
    let mut cache = KvCache::new(&model, 2, 8).unwrap();
    let mut scratch = Scratch::new();
    let slot = cache.allocate().unwrap();
    let t = |token, pos| BatchToken {
        slot,
        token,
        pos,
        logits: true,
    };
    let vocab = model.vocab_size() as u32;
    let err = model
        .forward(&mut cache, &mut scratch, &[t(vocab, 0)])
        .unwrap_err();
    assert!(
        matches!(err, ForwardError::TokenOutOfRange { index: 0, .. }),
        "{err}"
    );
    let err = model
        .forward(&mut cache, &mut scratch, &[t(1, 0), t(2, 2)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ForwardError::PositionGap {
                index: 1,
                pos: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .forward(&mut cache, &mut scratch, &[t(1, 8)])
        .unwrap_err();
    assert!(
        matches!(err, ForwardError::PositionOutOfRange { .. }),
        "{err}"
    );
    let free_slot = cache.allocate().unwrap();
    cache.free(free_slot);
    let err = model
        .forward(
            &mut cache,
            &mut scratch,
            &[BatchToken {
                slot: free_slot,
                token: 1,
                pos: 0,
                logits: true,
            }],
        )
        .unwrap_err();
    assert!(matches!(err, ForwardError::UnknownSlot { .. }), "{err}");
    assert_eq!(
        cache.len(slot),
        0,
        "refused batches must not advance the slot"
    );
    assert!(KvCache::new(&model, 1, model.context_length() + 1).is_err());
}

#[test]
fn metadata_is_exposed_and_the_activation_key_overrides_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let i2s = Model::load(
        &write(
            dir.path(),
            &SyntheticModel::tiny(WeightFormat::I2S, 1),
            "a.gguf",
        ),
        options(1),
    )
    .unwrap();
    assert_eq!(i2s.architecture().as_str(), "bitnet-b1.58");
    assert_eq!(i2s.activation(), FfnActivation::Relu2);
    assert_eq!(i2s.context_length(), SyntheticShape::tiny().context_length);
    assert!(i2s.tied_output());
    assert!(!i2s.output_is_int8());
    assert_eq!(i2s.name(), "synthetic-bitnet-seed1");

    let mut silu = SyntheticModel::tiny(WeightFormat::Tq1_0, 1);
    silu.activation = FfnActivation::Silu;
    let silu = Model::load(&write(dir.path(), &silu, "b.gguf"), options(1)).unwrap();
    assert_eq!(silu.architecture().as_str(), "bitnet");
    assert_eq!(silu.activation(), FfnActivation::Silu);

    let int8 = Model::load(
        &write(
            dir.path(),
            &SyntheticModel::tiny(WeightFormat::I2S, 1),
            "c.gguf",
        ),
        LoadOptions {
            int8_output: true,
            threads: 1,
        },
    )
    .unwrap();
    assert!(int8.output_is_int8());
    assert!(int8.weight_bytes_per_token() < i2s.weight_bytes_per_token());
}

#[test]
fn separate_scale_tensors_give_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let plain = SyntheticModel::tiny(WeightFormat::Tq2_0, 4);
    let mut scaled = plain.clone();
    scaled.scale_tensors = true;
    let a = Model::load(&write(dir.path(), &plain, "a.gguf"), options(1)).unwrap();
    let b = Model::load(&write(dir.path(), &scaled, "b.gguf"), options(1)).unwrap();
    assert_eq!(greedy(&a, &[3, 4, 5], 16), greedy(&b, &[3, 4, 5], 16));
}

/// Rewrites a synthetic model's GGUF with one tensor or key changed.
fn rewrite(model: &SyntheticModel, edit: impl FnOnce(&mut GgufWriter)) -> Vec<u8> {
    let mut writer = model.to_writer().unwrap();
    edit(&mut writer);
    writer.to_bytes().unwrap()
}

fn load_bytes(bytes: Vec<u8>) -> Result<Model, LoadError> {
    let file = GgufFile::from_bytes(bytes)?;
    Model::from_gguf(&file, options(1))
}

#[test]
fn broken_models_are_refused_naming_the_tensor_or_key() {
    let base = SyntheticModel::tiny(WeightFormat::I2S, 9);
    let good = base.to_writer().unwrap();
    let rebuild = |skip: &str, replace: Option<(&str, &[u64])>| {
        let file = GgufFile::from_bytes(good.to_bytes().unwrap()).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in file.metadata() {
            w.set(k.clone(), v.clone());
        }
        for t in file.tensors() {
            if t.name == skip {
                continue;
            }
            let data = file.tensor_data(t).to_vec();
            match replace {
                Some((name, dims)) if name == t.name => {
                    let n: u64 = dims.iter().product();
                    w.add_tensor(
                        t.name.clone(),
                        dims,
                        t.ggml_type,
                        vec![0; n as usize / 4 + 32],
                    )
                    .unwrap()
                }
                _ => w
                    .add_tensor(t.name.clone(), &t.dims, t.ggml_type, data)
                    .unwrap(),
            };
        }
        w.to_bytes().unwrap()
    };

    let err = load_bytes(rebuild("blk.1.ffn_up.weight", None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor \"blk.1.ffn_up.weight\" is missing; the file is incomplete or not a BitNet model"
    );

    let err = load_bytes(rebuild("", Some(("blk.0.attn_k.weight", &[256, 256])))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor \"blk.0.attn_k.weight\" has shape [256, 256] but the hyper-parameters need [256, 128]"
    );

    let err = load_bytes(rewrite(&base, |w| {
        w.set(
            "general.architecture",
            MetadataValue::String("llama".into()),
        );
    }))
    .unwrap_err();
    assert!(
        err.to_string().contains("\"llama\" is not supported"),
        "{err}"
    );

    let err = load_bytes(rewrite(&base, |w| {
        w.set("bitnet-b1.58.attention.head_count", MetadataValue::U32(3));
    }))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("bitnet-b1.58.attention.head_count"),
        "{err}"
    );

    let err = load_bytes(rewrite(&base, |w| {
        w.set(
            "bitnet-b1.58.hidden_activation",
            MetadataValue::String("gelu".into()),
        );
    }))
    .unwrap_err();
    assert!(err.to_string().contains("hidden_activation"), "{err}");
}

#[test]
fn truncated_or_damaged_model_files_never_panic() {
    let bytes = SyntheticModel::tiny(WeightFormat::Tq1_0, 6)
        .to_writer()
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..60 {
        let cut = (next() % bytes.len() as u64) as usize;
        let err = load_bytes(bytes[..cut].to_vec()).unwrap_err();
        assert!(matches!(err, LoadError::Gguf(_)), "cut at {cut}: {err}");
    }
    for _ in 0..60 {
        let mut damaged = bytes.clone();
        // Damage the header region, where flips change structure rather than weights.
        let at = (next() % 4096) as usize;
        damaged[at] ^= (next() as u8) | 1;
        let _ = load_bytes(damaged);
    }
    let err = Model::load(Path::new("/nonexistent/model.gguf"), options(1)).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn the_generated_vocabulary_drives_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &SyntheticModel::tiny(WeightFormat::I2S, 1),
        "m.gguf",
    );
    let model = Model::load(&path, options(1)).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    assert_eq!(tokenizer.vocab_size(), model.vocab_size());
    let text = "The capital of France is Paris. Ünïcode ✓ 2024!";
    let ids = tokenizer.encode(text, false, false);
    assert_eq!(tokenizer.decode(&ids), text);
    let english = "The capital of France is Paris.";
    let english_ids = tokenizer.encode(english, false, false);
    assert!(
        english_ids.len() <= english.len() / 3,
        "learned merges should cover common words: {english_ids:?}"
    );
    let eot = tokenizer.token_id("<|eot_id|>").unwrap();
    assert_eq!(tokenizer.eot(), Some(eot));
    assert!(tokenizer.is_eog(eot));
    assert_eq!(tokenizer.encode("<|eot_id|>", false, true), vec![eot]);
}

#[test]
fn a_loaded_model_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<KvCache>();
    let (_dir, model) = tiny_model(WeightFormat::Tq2_0, 12);
    let model = std::sync::Arc::new(model);
    let expected = greedy(&model, &[7, 8, 9], 8);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let model = model.clone();
            std::thread::spawn(move || greedy(&model, &[7, 8, 9], 8))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), expected);
    }
}

/// Private resident memory of this process in MB (`RssAnon` of /proc/self/status).
#[cfg(target_os = "linux")]
fn resident_anon_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

/// A server sizes its cache for every slot at the full context; memory must follow what the
/// sequences hold, not that bound, or a container with a memory limit dies at start-up.
#[cfg(target_os = "linux")]
#[test]
fn a_full_context_cache_costs_memory_only_for_the_positions_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &SyntheticModel::tiny(WeightFormat::I2S, 3),
        "m.gguf",
    );
    let model = Model::load(&path, options(1)).unwrap();
    let slots = 2048;
    let before = resident_anon_mb();
    let mut cache = KvCache::new(&model, slots, model.context_length()).unwrap();
    let mb = cache.bytes() as f64 / 1e6;
    assert!(
        mb > 500.0,
        "the cache should be large for this check: {mb} MB"
    );
    let slot = cache.allocate().unwrap();
    let mut scratch = Scratch::new();
    let batch: Vec<BatchToken> = (0..8)
        .map(|pos| BatchToken {
            slot,
            token: 10 + pos as u32,
            pos,
            logits: pos == 7,
        })
        .collect();
    model.forward(&mut cache, &mut scratch, &batch).unwrap();
    let grown = resident_anon_mb() - before;
    // Other tests run in parallel in this process, so allow them some room.
    assert!(
        grown < mb / 4.0,
        "a {mb:.0} MB cache with 8 positions written made the process {grown:.0} MB larger"
    );
}
