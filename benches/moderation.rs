//! The semantic moderation check on this machine: time to judge one message
//! of about 32 tokens, distinct messages (every one a cache miss: the model
//! runs) and repeats (the exact-text cache answers), plus the whole input
//! path (normalisation, lexicon, semantic) for distinct messages, and the
//! texts per second of many threads judging at once.
//!
//! `scripts/models.sh install && cargo bench --bench moderation`
//! (`STEWARD_BENCH_ROUNDS`, default 200; `STEWARD_BENCH_CONSTITUTION`, default
//! `config/constitution.toml`: `config/constitution-trained.toml` times the trained classifier). Targets (issue 7): p50 <= 3 ms and
//! p99 <= 10 ms for a 32-token message.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod stats;

use std::path::Path;
use std::time::Instant;

use steward::config::Settings;
use steward::moderation::normalize::normalize;
use steward::moderation::semantic::{Classifier, Route, SemanticModel};
use steward::policy::Constitution;

use stats::report;

const SUBJECTS: &[&str] = &["my neighbour", "the old bridge", "a chemistry set", "our office printer", "the school bus", "a garden hose"];
const ASKS: &[&str] = &[
    "Could you explain in plain words, step by step, how I would quietly deal with",
    "For a story I am writing this weekend, describe what a character would do to fix",
    "I keep wondering late at night what the fastest and cheapest way is to get rid of",
];

/// Distinct messages of about 32 WordPiece tokens each.
fn messages(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let ask = ASKS[i % ASKS.len()];
            let subject = SUBJECTS[(i / ASKS.len()) % SUBJECTS.len()];
            format!("{ask} {subject} before day {i} ends, without anyone else noticing it at all?")
        })
        .collect()
}

fn main() {
    let rounds: usize = std::env::var("STEWARD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings::load_from(&root.join("config")).expect("config loads");
    let document = std::env::var("STEWARD_BENCH_CONSTITUTION").unwrap_or_else(|_| "config/constitution.toml".into());
    let constitution = Constitution::load(&root.join(&document)).expect("constitution");
    println!("constitution {document} ({})", constitution.semantic.classifier.map_or("judged by its exemplars".into(), |c| format!("classifier {c}")));
    let started = Instant::now();
    let model = SemanticModel::shared(&root.join(&settings.moderation.model_dir), rounds * 4).expect("model (scripts/models.sh install)");
    let classifiers = root.join(&settings.moderation.classifier_dir);
    let classifier = Classifier::shared(model.clone(), &classifiers, &constitution, steward::moderation::semantic::Exemplars::Keep).expect("classifier loads");
    println!(
        "model loaded and {} exemplars embedded in {:.1} s",
        constitution.categories.iter().map(|c| c.examples.len() + c.allowed_examples.len()).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );

    let texts: Vec<String> = messages(rounds).iter().map(|m| normalize(m)).collect();
    let tokens: Vec<usize> = texts.iter().map(|t| model.token_count(t).unwrap()).collect();
    println!("messages: {rounds} distinct, {}-{} tokens each, e.g. {:?}", tokens.iter().min().unwrap(), tokens.iter().max().unwrap(), texts[0]);
    // Warm-up (allocator, caches) on other text.
    for warm in messages(rounds + 8).iter().skip(rounds) {
        classifier.judge(&normalize(warm)).unwrap();
    }

    let (mut all, mut fast, mut slow) = (Vec::new(), Vec::new(), Vec::new());
    for text in &texts {
        let route = classifier.route(classifier.fast_scores(text).unwrap());
        let t = Instant::now();
        classifier.judge(text).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        all.push(ms);
        if route == Route::Transformer {
            slow.push(ms)
        } else {
            fast.push(ms)
        }
    }
    println!("the static stage decided {} of {rounds}; the transformer judged {}", fast.len(), slow.len());
    report("semantic check, distinct, all", all);
    if !fast.is_empty() {
        report("  decided by the static stage", fast);
    }
    if !slow.is_empty() {
        report("  judged by the transformer", slow);
    }

    let mut hit = Vec::with_capacity(rounds);
    for text in &texts {
        let t = Instant::now();
        classifier.judge(text).unwrap();
        hit.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("semantic check, repeated (cache)", hit);

    // The same work in bulk (the dry run's way): texts of one token length in one pass.
    let bulk: Vec<String> = messages(rounds * 2 + 8).iter().skip(rounds + 8).map(|m| normalize(m)).collect();
    let t = Instant::now();
    let embedded = model.prefetch(&bulk).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let lengths: std::collections::BTreeSet<usize> = bulk.iter().map(|t| model.token_count(t).unwrap()).collect();
    println!(
        "prefetch, distinct, {} lengths, at most {} per pass: {embedded} texts in {ms:.0} ms, {:.2} ms per text",
        lengths.len(),
        steward::moderation::semantic::BATCH,
        ms / embedded.max(1) as f64
    );

    // Texts judged at once on many threads, as under load (each its own pass): the layer's
    // throughput, which bounds a gateway's turns per second when every prompt is distinct.
    let mut offset = rounds * 3;
    for threads in [1, 2, 4, 16, 64] {
        let texts: Vec<String> = messages(offset + threads * 4).iter().skip(offset).map(|m| normalize(m)).collect();
        offset += texts.len();
        let seconds = concurrently(&texts, threads, |t| assert!(classifier.judge(t).is_ok()));
        println!("{threads:>2} threads at once, {} distinct texts: {:.1} texts/s", texts.len(), texts.len() as f64 / seconds);
    }

    let mut normalise = Vec::with_capacity(rounds);
    for m in messages(rounds) {
        let t = Instant::now();
        std::hint::black_box(normalize(&m));
        normalise.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("normalisation only", normalise);
}

/// Seconds to run `work` over `texts` on `threads` threads started together, each taking its share in turn.
fn concurrently(texts: &[String], threads: usize, work: impl Fn(&str) + Sync) -> f64 {
    let barrier = std::sync::Barrier::new(threads);
    let started = Instant::now();
    std::thread::scope(|s| {
        for share in texts.chunks(texts.len().div_ceil(threads)) {
            let (barrier, work) = (&barrier, &work);
            s.spawn(move || {
                barrier.wait();
                share.iter().for_each(|t| work(t));
            });
        }
    });
    started.elapsed().as_secs_f64()
}
