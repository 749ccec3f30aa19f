//! Idle streams: many SSE streams held open against an upstream that has not
//! answered yet, through the pass-through proxy (the floor) and through
//! Steward, to measure memory per open stream. Each stream holds a client
//! socket and an upstream socket in the server, so 8,000 streams need the
//! 20,000 open files a process may hold here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::process::{free_port, wait_healthy, Proc};
use crate::upstream::Replay;

pub async fn run(dir: &Path) {
    let streams: usize = crate::env_or("STEWARD_BENCH_IDLE_STREAMS", 8000);
    let semantic = crate::env_or("STEWARD_BENCH_IDLE_SEMANTIC", "on".to_owned()) == "on";
    let up_port = free_port();
    let hour = Duration::from_secs(3600);
    let _upstream = crate::process::helper("upstream", up_port, Replay { tokens: 1, first_delay: hour, token_delay: Duration::ZERO }.to_args());
    wait_healthy("upstream", &format!("http://127.0.0.1:{up_port}/health"), Duration::from_secs(10)).await;
    let body = json!({
        "model": "replay", "stream": true, "max_tokens": 8, "messages": [{ "role": "user", "content": "Write one sentence about the sea." }],
    });

    // The floor: the pass-through proxy, a stream open once the upstream's response headers are through.
    let port = free_port();
    let proxy = crate::process::helper("proxy", port, vec![up_port.to_string(), "per-worker".into()]);
    wait_healthy("proxy", &format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10)).await;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    hold("pass-through proxy", &proxy, &url, None, &body, streams, None).await;
    drop(proxy);

    let port = free_port();
    let config =
        crate::Config { name: "idle".into(), semantic, overlapped: false, full: false, binary: env!("CARGO_BIN_EXE_steward").into(), root: crate::root() };
    let env = crate::steward_env(&config, up_port, port, dir, &[("STEWARD_SLM__FIRST_TOKEN_TIMEOUT", "1h".into())]).await;
    let (steward, key) = crate::start_steward(&env, port, &dir.join("steward-idle.log")).await;
    let url = format!("http://127.0.0.1:{port}/v1/chat/stream");
    let body = json!({ "message": "Write one sentence about the sea.", "max_tokens": 8 });
    // The `session` event arrives at admission; the model has not answered.
    let name = format!("steward (semantic {})", if semantic { "on" } else { "off" });
    hold(&name, &steward, &url, Some(&key), &body, streams, Some(b"event: session")).await;
    report_errors(&dir.join("steward-idle.log"));
}

/// Opens `streams` streams through `server` and holds them; prints its RSS at
/// rest (after one request) and with them all open. A stream counts as open
/// once its response has started, or once its first bytes start with `first`.
async fn hold(name: &str, server: &Proc, url: &str, key: Option<&str>, body: &serde_json::Value, streams: usize, first: Option<&'static [u8]>) {
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(streams).build().expect("client");
    let request = |body: &serde_json::Value| {
        let request = http.post(url).json(body);
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    };
    // One request first, so the caches and pools of a running server exist before "at rest".
    let _ = request(body).timeout(Duration::from_millis(500)).send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rest_kib, _) = server.memory_kib();
    println!("{name}: RSS at rest {:.1} MiB", rest_kib as f64 / 1024.0);

    // Two halves: the average over all streams from rest, and the cost of the second half
    // alone (caches and pools that grow with use have mostly grown by then).
    let started = Instant::now();
    let mut open = Vec::with_capacity(streams);
    let mut half_kib = 0;
    for half in [streams / 2, streams - streams / 2] {
        open.extend(open_streams(name, &request, body, half, first).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        if half_kib == 0 {
            half_kib = server.memory_kib().0;
        }
    }
    let second_half = open.len().saturating_sub(streams / 2).max(1);
    println!("{name}: {} of {streams} streams open after {:.1} s", open.len(), started.elapsed().as_secs_f64());
    let (open_kib, peak_kib) = server.memory_kib();
    let per_stream = (open_kib.saturating_sub(rest_kib)) as f64 / open.len().max(1) as f64;
    let marginal = (open_kib.saturating_sub(half_kib)) as f64 / second_half as f64;
    println!(
        "{name}: RSS with {} open streams {:.1} MiB (peak {:.1} MiB); {:.1} KiB per open stream from rest, {:.1} KiB per stream of the second half",
        open.len(),
        open_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        per_stream,
        marginal
    );
}

/// Opens `count` streams, 256 at a time, and returns those that opened; reports why others did not.
async fn open_streams<F>(name: &str, request: &F, body: &serde_json::Value, count: usize, first: Option<&'static [u8]>) -> Vec<impl futures_util::Stream>
where
    F: Fn(&serde_json::Value) -> reqwest::RequestBuilder,
{
    let opening = Arc::new(Semaphore::new(256));
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let (sent, opening) = (request(body).send(), opening.clone());
        held.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore");
            let response = sent.await.map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            let mut stream = response.bytes_stream();
            if let Some(first) = first {
                let bytes = stream.next().await.ok_or(format!("{status}, no body"))?.map_err(|e| format!("body: {e}"))?;
                if !bytes.starts_with(first) {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(120)])));
                }
            }
            drop(permit);
            Ok(stream)
        }));
    }
    let mut open = Vec::with_capacity(count);
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for task in held {
        match task.await.expect("stream task") {
            Ok(stream) => open.push(stream),
            Err(why) => *failures.entry(why).or_default() += 1,
        }
    }
    for (why, n) in failures {
        println!("{name}: {n} streams not opened: {why}");
    }
    open
}

/// Prints the first distinct errors of the server's log, and how many there were.
fn report_errors(log: &Path) {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let mut errors: Vec<&str> = log.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    let total = errors.len();
    errors.dedup_by_key(|l| l.split("\"message\"").nth(1).map(|m| m.chars().take(60).collect::<String>()));
    for line in errors.iter().take(5) {
        println!("steward log, error: {}", line.chars().take(400).collect::<String>());
    }
    if total > 0 {
        println!("steward log: {total} error lines");
    }
}
