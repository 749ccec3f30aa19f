//! `STEWARD_BENCH_MODE=costs`: what one turn costs each shared service, for
//! `docs/scaling.md`. Steward runs with PostgreSQL, Redis and the broker
//! (`STEWARD_BENCH_POSTGRES_URL`, `STEWARD_BENCH_REDIS_URL`,
//! `STEWARD_BENCH_KAFKA`; the semantic layer off, which costs no service
//! anything), serves warm-up turns, then `STEWARD_BENCH_TURNS` (200) turns
//! at each concurrency of `STEWARD_BENCH_COST_CLIENTS` (1,16); the deltas of
//! the services' own counters and of the bytes on Steward's sockets to each,
//! divided by the turns, are printed. Run it alone on the services: Redis's
//! command counts and PostgreSQL's WAL are the whole server's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::Row;

use super::load::{closed_loop, closed_loop_turns, Target};
use super::process::free_port;
use super::upstream::Replay;
use super::{env_or, prompt, start_steward, steward_env, Config};

/// The counters read before and after the measured turns.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    pg_commits: f64,
    pg_rows_written: f64,
    pg_statements: Option<f64>,
    pg_wal_bytes: f64,
    redis_commands: f64,
    outbox_records: f64,
    outbox_bytes: f64,
    /// Bytes Steward sent to and received from each service's port.
    socket: [(f64, f64); 3],
}

pub async fn run(replay: &Replay, up_port: u16, dir: &Path) {
    let admin = std::env::var("STEWARD_BENCH_POSTGRES_URL").expect("costs need STEWARD_BENCH_POSTGRES_URL, STEWARD_BENCH_REDIS_URL and STEWARD_BENCH_KAFKA");
    let redis_url = std::env::var("STEWARD_BENCH_REDIS_URL").expect("STEWARD_BENCH_REDIS_URL");
    let kafka = std::env::var("STEWARD_BENCH_KAFKA").expect("STEWARD_BENCH_KAFKA");
    let ports = [port_of(&admin, 5432), port_of(&redis_url, 6379), port_of(&kafka, 9092)];
    let turns = env_or("STEWARD_BENCH_TURNS", 200u64);
    let config =
        Config { name: "full-off".into(), semantic: false, overlapped: false, full: true, binary: env!("CARGO_BIN_EXE_steward").into(), root: super::root() };
    let port = free_port();
    let env = steward_env(&config, up_port, port, dir, &[]).await;
    let database = env.vars.iter().find(|(k, _)| k == "STEWARD_DATABASE__URL").map(|(_, v)| v.clone()).unwrap();
    let (steward, key) = start_steward(&env, port, &dir.join("steward-costs.log")).await;
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&database).await.expect("bench database");
    let statements = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&db).await.is_ok()
        && sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1").execute(&db).await.is_ok();
    let redis = redis_client(&redis_url);
    let tokens = replay.tokens;
    let target = Target {
        url: format!("http://127.0.0.1:{port}/v1/chat/stream"),
        bearer: Some(key),
        body: Arc::new(move |n| json!({ "message": prompt(n), "max_tokens": tokens, "temperature": 0 })),
        content_marker: b"event: delta",
    };
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(64).build().expect("client");
    closed_loop_turns(&http, &target, 0, 20).await;
    println!("costs per turn with PostgreSQL, Redis and the broker ({} tokens, semantic layer off; {turns} turns per level)", replay.tokens);
    println!("\n| clients | PG commits | PG rows written | PG statements | PG WAL bytes | bytes to / from PG | Redis commands | bytes to / from Redis | Kafka records | Kafka payload bytes | bytes to / from the broker |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut next = 1_000_000;
    for clients in std::env::var("STEWARD_BENCH_COST_CLIENTS").unwrap_or_else(|_| "1,16".into()).split(',').filter_map(|c| c.trim().parse::<usize>().ok()) {
        // Let the relay publish what is queued, and the statistics settle, before each reading.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = read(&db, statements, &redis, steward.id(), ports).await;
        let served = if clients == 1 {
            closed_loop_turns(&http, &target, next, turns).await.completion_ms.len() as u64
        } else {
            turns_at(&http, &target, clients, turns).await
        };
        next += turns * 2;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = read(&db, statements, &redis, steward.id(), ports).await;
        let per = |a: f64, b: f64| (a - b) / served as f64;
        let pair = |i: usize| format!("{:.0} / {:.0}", per(after.socket[i].0, before.socket[i].0), per(after.socket[i].1, before.socket[i].1));
        println!(
            "| {clients} | {:.2} | {:.2} | {} | {:.0} | {} | {:.2} | {} | {:.2} | {:.0} | {} |",
            per(after.pg_commits, before.pg_commits),
            per(after.pg_rows_written, before.pg_rows_written),
            after.pg_statements.zip(before.pg_statements).map_or("—".into(), |(a, b)| format!("{:.2}", per(a, b))),
            per(after.pg_wal_bytes, before.pg_wal_bytes),
            pair(0),
            per(after.redis_commands, before.redis_commands),
            pair(1),
            per(after.outbox_records, before.outbox_records),
            per(after.outbox_bytes, before.outbox_bytes),
            pair(2),
        );
    }
    if !statements {
        println!("(PG statements: pg_stat_statements is not loaded; shared_preload_libraries = 'pg_stat_statements' adds the column)");
    }
    drop(steward);
}

/// About `turns` turns at `clients` concurrency (a closed loop sized to end near that count).
async fn turns_at(http: &reqwest::Client, target: &Target, clients: usize, turns: u64) -> u64 {
    // A short probe gives the rate; the measured loop runs for as long as `turns` take at it.
    let probe = closed_loop(http, target, clients, Duration::ZERO, Duration::from_secs(1)).await;
    let seconds = (turns as f64 / probe.rate().max(1.0)).max(0.5);
    closed_loop(http, target, clients, Duration::ZERO, Duration::from_secs_f64(seconds)).await.completion_ms.len() as u64
}

fn port_of(url: &str, default: u16) -> u16 {
    let rest = url.split("://").last().unwrap_or(url);
    let host = rest.split(['/', ',']).next().unwrap_or(rest);
    host.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(default)
}

struct Redis(std::net::SocketAddr);

fn redis_client(url: &str) -> Redis {
    let port = port_of(url, 6379);
    Redis(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

impl Redis {
    /// The server's commands so far (`INFO commandstats`), less the INFO calls themselves.
    fn commands(&self) -> f64 {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.0).expect("redis");
        stream.write_all(b"INFO commandstats\r\nQUIT\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:") && !l.starts_with("cmdstat_quit:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn read(db: &sqlx::PgPool, statements: bool, redis: &Redis, pid: u32, ports: [u16; 3]) -> Counters {
    let stats =
        sqlx::query("SELECT xact_commit::float8, (tup_inserted + tup_updated + tup_deleted)::float8 FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(db)
            .await
            .unwrap();
    let wal: f64 = sqlx::query("SELECT wal_bytes::float8 FROM pg_stat_wal").fetch_one(db).await.map(|r| r.get(0)).unwrap_or(0.0);
    let pg_statements = if statements {
        let calls: f64 = sqlx::query(
            "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(db)
        .await
        .unwrap()
        .get(0);
        Some(calls)
    } else {
        None
    };
    let outbox = sqlx::query("SELECT count(*)::float8, coalesce(sum(octet_length(payload)), 0)::float8 FROM outbox").fetch_one(db).await.unwrap();
    Counters {
        pg_commits: stats.get(0),
        pg_rows_written: stats.get(1),
        pg_statements,
        pg_wal_bytes: wal,
        redis_commands: redis.commands(),
        outbox_records: outbox.get(0),
        outbox_bytes: outbox.get(1),
        socket: ports.map(|port| socket_bytes(pid, port)),
    }
}

/// Bytes `pid` sent to and received from connections to `port` (`ss -tinp`: `bytes_acked`, `bytes_received`).
fn socket_bytes(pid: u32, port: u16) -> (f64, f64) {
    let out = std::process::Command::new("ss").args(["-tinpH", "state", "established", &format!("( dport = :{port} )")]).output().expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (mut sent, mut received) = (0.0, 0.0);
    while let Some(line) = lines.next() {
        let info = lines.next().unwrap_or_default();
        if !line.contains(&format!("pid={pid},")) {
            continue;
        }
        let field = |name: &str| info.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        sent += field("bytes_acked:");
        received += field("bytes_received:");
    }
    (sent, received)
}
