//! Closed-loop clients: each sends a streaming request, reads it to the end,
//! and sends the next, on keep-alive connections shared through one HTTP
//! client, as SDKs do. Records time to first content and completion time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

/// What to call and how to recognise the first content in its stream.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub bearer: Option<String>,
    /// The request body for the `n`th request (distinct prompts where it matters).
    pub body: Arc<dyn Fn(u64) -> serde_json::Value + Send + Sync>,
    /// Bytes that first appear in the stream with the first content.
    pub content_marker: &'static [u8],
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub ttft_ms: Vec<f64>,
    pub completion_ms: Vec<f64>,
    /// Transport errors and non-2xx answers.
    pub failures: u64,
    /// Streams that ended without content (a refusal, say).
    pub empty: u64,
    pub elapsed: Duration,
}

/// Why a request is not counted as served.
enum Miss {
    Failed,
    Empty,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.completion_ms.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// One request: (time to first content, completion).
async fn one(http: &reqwest::Client, target: &Target, n: u64) -> Result<(f64, f64), Miss> {
    let started = Instant::now();
    let mut request = http.post(&target.url).json(&(target.body)(n));
    if let Some(key) = &target.bearer {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|_| Miss::Failed)?;
    if !response.status().is_success() {
        return Err(Miss::Failed);
    }
    let mut stream = response.bytes_stream();
    let (mut seen, mut first) = (Vec::with_capacity(4096), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Miss::Failed)?;
        if first.is_none() {
            seen.extend_from_slice(&chunk);
            if seen.windows(target.content_marker.len()).any(|w| w == target.content_marker) {
                first = Some(started.elapsed());
            }
        }
    }
    let done = started.elapsed();
    let first = first.ok_or(Miss::Empty)?;
    Ok((first.as_secs_f64() * 1e3, done.as_secs_f64() * 1e3))
}

/// One client sending `count` requests one after another, numbered from `first`.
pub async fn closed_loop_turns(http: &reqwest::Client, target: &Target, first: u64, count: u64) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    for n in first..first + count {
        match one(http, target, n).await {
            Ok((ttft, done)) => {
                outcome.ttft_ms.push(ttft);
                outcome.completion_ms.push(done);
            }
            Err(Miss::Failed) => outcome.failures += 1,
            Err(Miss::Empty) => outcome.empty += 1,
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Runs `clients` closed loops for `warmup` (discarded) then `measure`.
pub async fn closed_loop(http: &reqwest::Client, target: &Target, clients: usize, warmup: Duration, measure: Duration) -> Outcome {
    let counter = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let (measure_from, stop_at) = (begin + warmup, begin + warmup + measure);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (http, target, counter) = (http.clone(), target.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            loop {
                if Instant::now() >= stop_at {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let result = one(&http, &target, n).await;
                // Counted when it ends inside the measured window, whenever it started.
                let ended = Instant::now();
                if ended < measure_from || ended > stop_at {
                    continue;
                }
                match result {
                    Ok((ttft, done)) => {
                        outcome.ttft_ms.push(ttft);
                        outcome.completion_ms.push(done);
                    }
                    Err(Miss::Failed) => outcome.failures += 1,
                    Err(Miss::Empty) => outcome.empty += 1,
                }
            }
            outcome
        }));
    }
    let mut total = Outcome { elapsed: measure, ..Outcome::default() };
    for task in tasks {
        let outcome = task.await.expect("client task");
        total.ttft_ms.extend(outcome.ttft_ms);
        total.completion_ms.extend(outcome.completion_ms);
        total.failures += outcome.failures;
        total.empty += outcome.empty;
    }
    total
}
