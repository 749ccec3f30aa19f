//! A client that stops reading, against the real `steward` binary and a real
//! model server: Steward's memory stays bounded while the model goes on
//! generating, the write-stall deadline fails the turn as `client_too_slow`
//! and frees the model, and the client reads the end of the turn when it
//! comes back.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Row;
use steward::identity::{Capability, KeyStore, TenantId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::unique;
use crate::instances::{shared_database, Instance};
use crate::moderation::PrivateModelServer;

/// The process's resident memory, in KiB, from `/proc`.
pub(crate) fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A raw HTTP/1.1 connection with a small receive buffer, so that a client
/// that stops reading stops taking bytes soon.
pub(crate) async fn connect_small(address: &str) -> tokio::net::TcpStream {
    let address: std::net::SocketAddr = address.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    socket.connect(&address.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(socket.into()).unwrap()
}

/// The binary on `model`, with small buffers and a 2 s write-stall deadline, so that a client
/// that stops reading stalls its turn soon.
pub(crate) async fn stalling_instance(model: &PrivateModelServer, database_url: &str) -> Instance {
    let slm = format!("http://127.0.0.1:{}/v1", model.port);
    let env = [
        ("STEWARD_SLM__BASE_URL", slm.as_str()),
        ("STEWARD_SERVER__WRITE_STALL", "2s"),
        ("STEWARD_SERVER__STREAM_BUFFER_EVENTS", "16"),
        ("STEWARD_SERVER__SEND_BUFFER_BYTES", "1024"),
        // The lexicon alone judges the answer: the model's pace is all that sets the stream's.
        ("STEWARD_MODERATION__SEMANTIC", "off"),
    ];
    Instance::start_with(database_url, &format!("{}:", unique("steward-test-")), &env).await
}

/// Steward's memory while a stalled turn's model keeps generating, until the model is freed.
pub(crate) struct Stall {
    pub freed_after: Duration,
    pub resident_at_stall: u64,
    pub resident_peak: u64,
}

/// Watches Steward's resident memory from now until `model` is idle (at most 300 s).
pub(crate) async fn until_the_model_is_freed(model: &PrivateModelServer, steward: &Instance) -> Stall {
    let stalled = Instant::now();
    let resident_at_stall = resident_kib(steward.pid());
    let mut resident_peak = resident_at_stall;
    while model.busy().await {
        assert!(stalled.elapsed() < Duration::from_secs(300), "the model was never freed");
        resident_peak = resident_peak.max(resident_kib(steward.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Stall { freed_after: stalled.elapsed(), resident_at_stall, resident_peak }
}

/// The body of a chunked response, from what was read so far (complete chunks only).
fn dechunk(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let Some((_, mut rest)) = text.split_once("\r\n\r\n") else { return String::new() };
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size + 2 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_bounded_memory_and_its_turn_fails_as_client_too_slow_freeing_the_model() {
    let model = PrivateModelServer::with_context(8192).await;
    let (url, db) = shared_database().await;
    let tenant = unique("slow-reader-");
    let (_, key) = KeyStore::new(db.clone()).create(&TenantId::parse(&tenant).unwrap(), &[Capability::Chat]).await.unwrap();
    let steward = stalling_instance(&model, &url).await;
    let max_tokens = 4000;
    let body = json!({ "message": "Write a very long story about the sea.", "max_tokens": max_tokens, "temperature": 0 }).to_string();
    let mut client = connect_small(&steward.address).await;
    let request = format!(
        "POST /v1/chat/stream HTTP/1.1\r\nHost: steward\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        key.expose(),
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buffer = vec![0u8; 4096];
    while !dechunk(&raw).contains("event: delta") {
        let n = tokio::time::timeout(Duration::from_secs(60), client.read(&mut buffer)).await.expect("a first delta").unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buffer[..n]);
    }
    let session = dechunk(&raw).lines().find_map(|l| l.split("\"session_id\":\"").nth(1).map(|s| s.split('"').next().unwrap().to_owned())).unwrap();

    // The client stops reading; the model goes on generating.
    let Stall { freed_after, resident_at_stall, resident_peak } = until_the_model_is_freed(&model, &steward).await;
    let (_, predicted) = model.counters().await;

    // The client reads again: what was sent, then the turn's end.
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = client.read(&mut buffer).await.unwrap();
            raw.extend_from_slice(&buffer[..n]);
            if n == 0 || dechunk(&raw).contains("event: done") {
                break;
            }
        }
    })
    .await;
    let body = dechunk(&raw);
    assert!(rest.is_ok(), "the turn's end never came: {body}");
    let received = body.matches("event: delta").count();
    let growth = resident_peak.saturating_sub(resident_at_stall);
    eprintln!(
        "stalled reader: {received} deltas received of {predicted} tokens generated; model freed {freed_after:?} after the client stopped reading; \
         steward RSS {resident_at_stall} KiB at the stall, peak {resident_peak} KiB (+{growth} KiB)"
    );
    assert!(predicted < f64::from(max_tokens), "the deadline cut the generation short: {predicted} tokens");
    assert!(growth < 4096, "RSS grew {growth} KiB while the client did not read");
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty() && !e.starts_with(':')).collect();
    let tail: Vec<&str> = events.iter().rev().take(2).copied().collect();
    assert!(tail[1].starts_with("event: error\ndata: {\"code\":\"client_too_slow\""), "{tail:?}");
    assert!(tail[0].starts_with("event: done\ndata: {\"finish_reason\":\"error\""), "{tail:?}");

    let failed = sqlx::query("SELECT payload FROM outbox WHERE session_id = $1 AND event_type = 'turn.failed'")
        .bind(&session)
        .fetch_one(db.pool())
        .await
        .expect("turn.failed in the outbox");
    let payload: serde_json::Value = serde_json::from_str(&failed.try_get::<String, _>("payload").unwrap()).unwrap();
    assert_eq!(payload["data"]["code"], "client_too_slow", "{payload}");
    assert!(crate::events::validator().is_valid(&payload), "turn.failed does not match its schema: {payload}");
    let metrics = reqwest::get(format!("{}/metrics", steward.address)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("steward_turn_interruptions_total{route=\"chat_stream\",reason=\"client_too_slow\"} 1"), "{metrics}");
}
