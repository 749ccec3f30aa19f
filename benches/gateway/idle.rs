//! Idle streams: many SSE streams held open through Steward against an
//! upstream that has not answered yet, to measure memory per open stream.
//! Each stream holds a client socket and an upstream socket in Steward, so
//! 8,000 streams need the 20,000 open files a process may hold here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::process::{free_port, wait_healthy};
use crate::upstream::Replay;

pub async fn run(dir: &Path) {
    let streams: usize = crate::env_or("STEWARD_BENCH_IDLE_STREAMS", 8000);
    let semantic = crate::env_or("STEWARD_BENCH_IDLE_SEMANTIC", "on".to_owned()) == "on";
    let up_port = free_port();
    let hour = Duration::from_secs(3600);
    let _upstream = crate::process::upstream(up_port, Replay { tokens: 1, first_delay: hour, token_delay: Duration::ZERO }.to_args());
    wait_healthy("upstream", &format!("http://127.0.0.1:{up_port}/health"), Duration::from_secs(10)).await;
    let port = free_port();
    let config = crate::Config { name: "idle".into(), semantic, full: false, binary: env!("CARGO_BIN_EXE_steward").into(), root: crate::root() };
    let env = crate::steward_env(&config, up_port, port, dir, &[("STEWARD_SLM__FIRST_TOKEN_TIMEOUT_MS", "3600000".into())]).await;
    let (steward, key) = crate::start_steward(&env, port, &dir.join("steward-idle.log")).await;

    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(streams).build().expect("client");
    let url = format!("http://127.0.0.1:{port}/v1/chat/stream");
    let body = json!({ "message": "Write one sentence about the sea.", "max_tokens": 8 });
    // One turn first, so the caches and pools of a running instance exist before "at rest".
    let _ = http.post(&url).bearer_auth(&key).json(&json!({ "message": "hello", "max_tokens": 1 })).timeout(Duration::from_millis(500)).send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rest_kib, _) = steward.memory_kib();
    println!("steward (semantic {}): RSS at rest {:.1} MiB", if semantic { "on" } else { "off" }, rest_kib as f64 / 1024.0);

    let opening = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut held = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (http, url, key, body, opening) = (http.clone(), url.clone(), key.clone(), body.clone(), opening.clone());
        held.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore");
            let response = http.post(&url).bearer_auth(&key).json(&body).send().await.ok()?;
            let mut stream = response.bytes_stream();
            // The `session` event arrives at admission; the model has not answered.
            let first = stream.next().await?.ok()?;
            drop(permit);
            first.starts_with(b"event: session").then_some(stream)
        }));
    }
    let mut open = Vec::with_capacity(streams);
    for task in held {
        if let Ok(Some(stream)) = task.await {
            open.push(stream);
        }
    }
    println!("{} of {streams} streams open after {:.1} s", open.len(), started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (open_kib, peak_kib) = steward.memory_kib();
    let per_stream = (open_kib.saturating_sub(rest_kib)) as f64 / open.len().max(1) as f64;
    println!(
        "steward RSS with {} open streams: {:.1} MiB (peak {:.1} MiB); {:.1} KiB per open stream",
        open.len(),
        open_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        per_stream
    );
    drop(open);
}
