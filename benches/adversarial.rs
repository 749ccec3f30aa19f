//! Issue 19's pressure bench: each attack against the real binary (PostgreSQL,
//! Redis, the model) while another tenant chats; that tenant's time to first
//! token (p99 of its turns) during the attack against before it (target: at
//! most 2x), and Steward's resident memory. The attacks' functional outcomes
//! (status codes, nothing lost) are tests (`tests/api/adversarial/`); this
//! measures what they cost the others, alone on the machine.
//!
//! Needs the services `scripts/test.sh` starts:
//! `STEWARD_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
//! STEWARD_BENCH_REDIS_URL=redis://127.0.0.1:6379 STEWARD_BENCH_SLM_URL=http://127.0.0.1:8091/v1
//! cargo bench --bench adversarial`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use steward::db::Database;
use steward::identity::{Capability, KeyStore, TenantId};
use tokio::io::AsyncWriteExt;

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A fresh PostgreSQL database with Steward's tables: its URL and a handle.
async fn database() -> (String, Database) {
    let admin = env("STEWARD_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let name = unique("steward_bench_");
    let db = Database::connect(&admin, 1).await.expect("PostgreSQL at STEWARD_BENCH_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(db.pool()).await.unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let db = Database::connect(&url, 2).await.unwrap();
    db.migrate().await.unwrap();
    (url, db)
}

/// The `steward` binary on a free port; killed when dropped.
struct Instance {
    child: Child,
    address: String,
}

impl Instance {
    async fn start(database_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let child = Command::new(env!("CARGO_BIN_EXE_steward"))
            .arg("serve")
            .current_dir(&root)
            .env("STEWARD_SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("STEWARD_DATABASE__URL", database_url)
            .env("STEWARD_REDIS__URL", env("STEWARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
            .env("STEWARD_REDIS__KEY_PREFIX", format!("{}:", unique("steward-bench-")))
            .env("STEWARD_SLM__BASE_URL", env("STEWARD_BENCH_SLM_URL", "http://127.0.0.1:8091/v1"))
            .env("STEWARD_POLICY__SIGNING_KEY", "bench-signing-key-0123456789abcdef0123")
            .env("STEWARD_TELEMETRY__LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the steward binary");
        let instance = Self { child, address: format!("http://127.0.0.1:{port}") };
        for _ in 0..600 {
            if reqwest::get(format!("{}/healthz", instance.address)).await.is_ok_and(|r| r.status() == 200) {
                return instance;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("steward did not start on {}", instance.address);
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Turns the victim runs per measurement.
const TURNS: usize = 20;

struct Victim {
    address: String,
    key: String,
    http: reqwest::Client,
}

impl Victim {
    /// The time to the first `delta` of one turn.
    async fn ttft(&self) -> Duration {
        let started = Instant::now();
        let body = json!({ "message": "Say hi.", "max_tokens": 2, "temperature": 0 });
        let response = self.http.post(format!("{}/v1/chat/stream", self.address)).bearer_auth(&self.key).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "the victim's turn is served");
        let mut stream = response.bytes_stream();
        let mut seen = String::new();
        let mut first = None;
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if first.is_none() && seen.contains("event: delta") {
                first = Some(started.elapsed());
            }
        }
        assert!(seen.contains("event: done"), "{seen}");
        first.unwrap_or_else(|| started.elapsed())
    }

    /// The largest of `TURNS` turns' TTFT (their p99).
    async fn p99(&self) -> Duration {
        let mut worst = Duration::ZERO;
        for _ in 0..TURNS {
            worst = worst.max(self.ttft().await);
        }
        worst
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

/// Runs `attack` until the victim has measured its turns; the victim's p99 during it.
async fn during<F: std::future::Future<Output = ()>>(victim: &Victim, attack: impl Fn() -> F) -> Duration {
    let stop = tokio_util::sync::CancellationToken::new();
    let attacking = async {
        while !stop.is_cancelled() {
            tokio::select! { () = attack() => {}, () = stop.cancelled() => {} }
        }
    };
    let measuring = async {
        let p99 = victim.p99().await;
        stop.cancel();
        p99
    };
    tokio::join!(attacking, measuring).1
}

#[tokio::main]
async fn main() {
    let (url, db) = database().await;
    let keys = KeyStore::new(db.clone());
    let victim_key = keys.create(&TenantId::parse(&unique("victim-")).unwrap(), &[Capability::Chat]).await.unwrap().1.expose().to_owned();
    let attacker = unique("attacker-");
    let attacker_key = keys.create(&TenantId::parse(&attacker).unwrap(), &[Capability::Chat]).await.unwrap().1.expose().to_owned();
    let steward = Instance::start(&url).await;
    let victim = Victim { address: steward.address.clone(), key: victim_key, http: reqwest::Client::new() };
    victim.p99().await; // warm up (model, moderation, pools)
                        // The attacking tenant's key is a real one, in use before the floods from this address begin.
    let status = reqwest::Client::new().get(format!("{}/v1/training/status", steward.address)).bearer_auth(&attacker_key).send().await.unwrap().status();
    assert_eq!(status, 200);
    let before = victim.p99().await;
    let rss_before = rss_kib(steward.pid());
    let address = steward.address.clone();
    let host = address.trim_start_matches("http://").to_owned();
    let junk = || format!("stw_{}", unique("junk"));
    let http = reqwest::Client::new();
    let hasty = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();

    let mut report = Vec::new();
    let p99 = during(&victim, || async {
        // Random keys whose clients hang up mid-lookup.
        let flood = (0..50).map(|_| hasty.get(format!("{address}/v1/training/status")).bearer_auth(junk()).send());
        futures_util::future::join_all(flood).await;
    })
    .await;
    report.push(("random keys, clients hanging up", p99));
    let p99 = during(&victim, || async {
        // Guessed keys from forged X-Forwarded-For values (no trusted proxy configured).
        let flood = (0..50)
            .map(|i| http.get(format!("{address}/v1/training/status")).bearer_auth(junk()).header("x-forwarded-for", format!("203.0.113.{}", i % 250)).send());
        futures_util::future::join_all(flood).await;
    })
    .await;
    report.push(("guessed keys, forged X-Forwarded-For", p99));
    let p99 = during(&victim, || async {
        // Slowloris: 64 connections sending their headers a byte every 20 ms.
        let slow = (0..64).map(|_| async {
            let Ok(mut socket) = tokio::net::TcpStream::connect(&host).await else { return };
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(b"a".repeat(40).iter()) {
                if socket.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        futures_util::future::join_all(slow).await;
    })
    .await;
    report.push(("slowloris, 64 connections", p99));
    // One tenant opening 10,000 sessions (each a turn without a session id), 64 at a time.
    let started = Instant::now();
    let opening = futures_util::stream::iter(0..10_000)
        .map(|_| {
            let request = http.post(format!("{address}/v1/chat/stream")).bearer_auth(&attacker_key).json(&json!({ "message": "Hi", "max_tokens": 1 }));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<u16>>();
    let (statuses, p99) = tokio::join!(opening, victim.p99());
    let elapsed = started.elapsed();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE tenant = $1").bind(&attacker).fetch_one(db.pool()).await.unwrap();
    println!("10,000 session openings by one tenant in {elapsed:?}: {admitted} admitted, {limited} refused 429; {sessions} sessions stored");
    report.push(("one tenant opening 10,000 sessions", p99));
    let p99 = during(&victim, || async {
        // Deeply nested JSON: 20,000 levels in 40 KB.
        let nested = format!("{{\"message\":{}1{}}}", "[".repeat(20_000), "]".repeat(20_000));
        let flood = (0..20).map(|_| {
            http.post(format!("{address}/v1/chat/stream")).bearer_auth(&attacker_key).header("content-type", "application/json").body(nested.clone()).send()
        });
        futures_util::future::join_all(flood).await;
    })
    .await;
    report.push(("deeply nested JSON", p99));
    let p99 = during(&victim, || async {
        // Bodies of 1 MiB, 16 times the limit.
        let huge = "x".repeat(1 << 20);
        let flood = (0..20).map(|_| {
            http.post(format!("{address}/v1/chat/stream")).bearer_auth(&attacker_key).header("content-type", "application/json").body(huge.clone()).send()
        });
        futures_util::future::join_all(flood).await;
    })
    .await;
    report.push(("1 MiB bodies", p99));

    let rss_after = rss_kib(steward.pid());
    println!("victim TTFT p99 before: {before:?}; Steward RSS {rss_before} KiB before the attacks, {rss_after} KiB after");
    println!("| attack | victim TTFT p99 | vs before | target (2x) |");
    println!("|---|---|---|---|");
    for (attack, p99) in &report {
        let ratio = p99.as_secs_f64() / before.as_secs_f64();
        println!("| {attack} | {:.1} ms | {ratio:.2}x | {} |", p99.as_secs_f64() * 1000.0, if ratio <= 2.0 { "met" } else { "missed" });
    }
}
