//! `STEWARD_BENCH_MODE=costs`: what one turn costs each shared service, for
//! `docs/scaling.md`. Steward runs with PostgreSQL, Redis and the broker
//! (`STEWARD_BENCH_POSTGRES_URL`, `STEWARD_BENCH_REDIS_URL`,
//! `STEWARD_BENCH_KAFKA`; the semantic layer off, which costs no service
//! anything; the tenant limits on, at values no turn reaches, so their
//! Redis scripts run as in production), serves warm-up turns, then
//! `STEWARD_BENCH_SECONDS` (5) of turns at each concurrency of
//! `STEWARD_BENCH_COST_CLIENTS` (1,16,64); the deltas of the services' own
//! counters and of the bytes on Steward's sockets to each, divided by the
//! turns stored meanwhile, are printed, with the statements PostgreSQL ran
//! most often (`pg_stat_statements`, when loaded). Run it alone on the
//! services: Redis's command counts and PostgreSQL's WAL are the whole
//! server's.

use std::path::Path;
use std::time::Duration;

use sqlx::Row;

use super::load::{closed_loop, closed_loop_turns};
use super::process::free_port;
use super::upstream::Replay;
use super::{chat_target, env_or, start_steward, steward_env, Config};

/// The counters read before and after the measured turns.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Turns stored so far.
    turns: f64,
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
    let seconds = Duration::from_secs_f64(env_or("STEWARD_BENCH_SECONDS", 5.0));
    let config =
        Config { name: "full-off".into(), semantic: false, overlapped: false, full: true, binary: env!("CARGO_BIN_EXE_steward").into(), root: super::root() };
    let port = free_port();
    let limits_on = [
        ("STEWARD_LIMITS__MAX_CONCURRENT_STREAMS", "100000".to_owned()),
        ("STEWARD_LIMITS__REQUESTS_PER_SECOND", "100000".to_owned()),
        ("STEWARD_LIMITS__BURST", "100000".to_owned()),
        ("STEWARD_LIMITS__TOKENS_PER_MINUTE", "1000000000".to_owned()),
    ];
    let env = steward_env(&config, up_port, port, dir, &limits_on).await;
    let database = env.vars.iter().find(|(k, _)| k == "STEWARD_DATABASE__URL").map(|(_, v)| v.clone()).unwrap();
    let (steward, key) = start_steward(&env, port, &dir.join("steward-costs.log")).await;
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&database).await.expect("bench database");
    let statements = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&db).await.is_ok()
        && sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1").execute(&db).await.is_ok();
    let redis = redis_client(&redis_url);
    let tokens = replay.tokens;
    let target = chat_target(port, key, tokens);
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(64).build().expect("client");
    closed_loop_turns(&http, &target, 0, 20).await;
    println!("costs per turn with PostgreSQL, Redis and the broker ({} tokens, semantic layer off, tenant limits on; {seconds:?} per level)", replay.tokens);
    println!("\n| clients | PG commits | PG rows written | PG statements | PG WAL bytes | bytes to / from PG | Redis commands | bytes to / from Redis | Kafka records | Kafka payload bytes | bytes to / from the broker |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut breakdowns = Vec::new();
    for clients in std::env::var("STEWARD_BENCH_COST_CLIENTS").unwrap_or_else(|_| "1,16,64".into()).split(',').filter_map(|c| c.trim().parse::<usize>().ok()) {
        // Let the relay publish what is queued, and the statistics settle, before each reading.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = read(&db, statements, &redis, steward.id(), ports).await;
        let calls_before = statement_calls(&db, statements).await;
        closed_loop(&http, &target, clients, Duration::ZERO, seconds).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = read(&db, statements, &redis, steward.id(), ports).await;
        // Every turn stored meanwhile, whichever loop it ended in: the divisor.
        let served = after.turns - before.turns;
        let per = |a: f64, b: f64| (a - b) / served;
        let calls_after = statement_calls(&db, statements).await;
        let mut top: Vec<(f64, String)> = calls_after
            .iter()
            .map(|(query, calls)| (per(*calls, calls_before.get(query).copied().unwrap_or(0.0)), query.clone()))
            .filter(|(n, _)| *n >= 0.005)
            .collect();
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        breakdowns.push((clients, top));
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
    for (clients, top) in breakdowns {
        println!("\nPostgreSQL statements per turn at c={clients}:");
        for (calls, query) in top.iter().take(12) {
            let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(110).collect();
            println!("  {calls:6.2}  {query}");
        }
    }
    drop(steward);
}

/// Calls so far of each statement PostgreSQL ran for this database (`pg_stat_statements`).
async fn statement_calls(db: &sqlx::PgPool, statements: bool) -> std::collections::HashMap<String, f64> {
    if !statements {
        return Default::default();
    }
    let rows = sqlx::query("SELECT query, calls::float8 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .fetch_all(db)
        .await
        .unwrap_or_default();
    let mut calls = std::collections::HashMap::new();
    for row in rows {
        *calls.entry(row.get::<String, _>(0)).or_insert(0.0) += row.get::<f64, _>(1);
    }
    calls
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
    let turns: f64 = sqlx::query("SELECT count(*)::float8 FROM turns").fetch_one(db).await.unwrap().get(0);
    Counters {
        turns,
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
