//! Side by side, in one run: a replay upstream alone, through a pass-through
//! proxy on Steward's stack (the floor for any gateway here), and through
//! Steward (release binary, its own process), under closed-loop streaming
//! clients at several concurrencies. Prints time to first content
//! and completion time (p50/p99), requests per second and resident memory,
//! as one markdown table.
//!
//! `cargo bench --bench gateway` runs Steward on embedded defaults (SQLite,
//! in-process lock store, events kept in the outbox) with the semantic layer
//! off and on (every prompt distinct). With `STEWARD_BENCH_POSTGRES_URL`,
//! `STEWARD_BENCH_REDIS_URL` and `STEWARD_BENCH_KAFKA` set, it also runs it
//! with PostgreSQL, Redis and the broker. `STEWARD_BENCH_MODE=idle` holds
//! `STEWARD_BENCH_IDLE_STREAMS` (8000) streams open against an upstream that
//! never answers and reports memory per open stream.
//!
//! Knobs: `STEWARD_BENCH_CLIENTS` (1,16,64,256), `STEWARD_BENCH_SECONDS` (5),
//! `STEWARD_BENCH_WARMUP_SECONDS` (1), `STEWARD_BENCH_TOKENS` (32),
//! `STEWARD_BENCH_TOKEN_DELAY_US` (0), `STEWARD_BENCH_FIRST_DELAY_US` (0),
//! `STEWARD_BENCH_STEWARD` (configurations to run, e.g. `embedded-off,full-on`;
//! `embedded-overlapped` and `full-overlapped`: the semantic layer on, with
//! overlapped dispatch),
//! `STEWARD_BENCH_PROXY` (`per-worker`, `shared`, both comma-separated, or
//! `none`: the pass-through proxy's connection pool),
//! `STEWARD_BENCH_BASELINE` (another checkout with a release build: each
//! configuration runs there first, for a before/after in one run),
//! `STEWARD_BENCH_TWO_UPSTREAMS` (`off` skips the rows of Steward over two
//! replay upstreams, with both up and with one killed mid-run),
//! `STEWARD_BENCH_NGINX` (`off` skips the nginx row, the second floor).
//! `STEWARD_BENCH_MODE=instructions` counts the instructions of a turn under
//! callgrind instead (see `instructions.rs`); `STEWARD_BENCH_MODE=costs`
//! what a turn costs PostgreSQL, Redis and the broker (see `costs.rs`);
//! `STEWARD_BENCH_MODE=scale` one and two instances behind nginx (`scale.rs`).
//! `MALLOC_ARENA_MAX` and `GLIBC_TUNABLES` pass through to Steward, for
//! allocator experiments.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod costs;
mod idle;
mod instructions;
mod load;
mod nginx;
mod process;
mod proxy;
mod scale;
#[path = "../stats/mod.rs"]
mod stats;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use load::{closed_loop, Outcome, Target};
use process::{free_port, wait_healthy, Proc, StewardEnv};
use upstream::Replay;

const TOPICS: [&str; 8] = ["the sea", "a mountain walk", "baking bread", "a city at night", "an old library", "spring rain", "a train journey", "a garden"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn prompt(n: u64) -> String {
    format!("Write a few calm sentences about {} for reader number {n}.", TOPICS[(n % TOPICS.len() as u64) as usize])
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One configuration of Steward under test.
struct Config {
    name: String,
    semantic: bool,
    /// The model request starts while input moderation runs (`moderation.dispatch = "overlapped"`).
    overlapped: bool,
    full: bool,
    /// The binary and the checkout it runs from: this build, or a baseline.
    binary: PathBuf,
    root: PathBuf,
}

fn configs() -> Vec<Config> {
    let full_available = ["STEWARD_BENCH_POSTGRES_URL", "STEWARD_BENCH_REDIS_URL", "STEWARD_BENCH_KAFKA"].iter().all(|k| std::env::var(k).is_ok());
    let default = if full_available { "embedded-off,embedded-on,full-off,full-on" } else { "embedded-off,embedded-on" };
    let list = std::env::var("STEWARD_BENCH_STEWARD").unwrap_or_else(|_| default.into());
    // A baseline build (another checkout, built with `cargo build --release`) runs before this one, in the same run.
    let baseline = std::env::var("STEWARD_BENCH_BASELINE").ok().map(PathBuf::from);
    let mut configs = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let full = name.starts_with("full");
        assert!(!full || full_available, "{name} needs STEWARD_BENCH_POSTGRES_URL, STEWARD_BENCH_REDIS_URL and STEWARD_BENCH_KAFKA");
        let overlapped = name.ends_with("-overlapped");
        let semantic = name.ends_with("-on") || overlapped;
        if let Some(base) = &baseline {
            let binary = base.join("target/release/steward");
            configs.push(Config { name: format!("{name} (baseline)"), semantic, overlapped, full, binary, root: base.clone() });
        }
        configs.push(Config { name: name.to_owned(), semantic, overlapped, full, binary: env!("CARGO_BIN_EXE_steward").into(), root: root() });
    }
    configs
}

/// Streaming turns of `tokens` tokens through Steward's `/v1/chat/stream` on `port`, a distinct prompt each.
fn chat_target(port: u16, key: String, tokens: usize) -> Target {
    Target {
        url: format!("http://127.0.0.1:{port}/v1/chat/stream"),
        bearer: Some(key),
        body: Arc::new(move |n| json!({ "message": prompt(n), "max_tokens": tokens, "temperature": 0 })),
        content_marker: b"event: delta",
    }
}

/// Steward's settings for `config`, isolated by a fresh name for this run.
async fn steward_env(config: &Config, upstream_port: u16, port: u16, dir: &Path, extra: &[(&str, String)]) -> StewardEnv {
    let root = &config.root;
    let run = format!("bench{}", uuid::Uuid::new_v4().simple());
    let mut vars: Vec<(String, String)> = vec![
        ("STEWARD_SERVER__BIND".into(), format!("127.0.0.1:{port}")),
        ("STEWARD_SLM__BASE_URL".into(), format!("http://127.0.0.1:{upstream_port}/v1")),
        // The bench's one tenant measures throughput, not its limits.
        ("STEWARD_LIMITS__MAX_CONCURRENT_STREAMS".into(), "0".into()),
        ("STEWARD_LIMITS__REQUESTS_PER_SECOND".into(), "0".into()),
        ("STEWARD_LIMITS__TOKENS_PER_MINUTE".into(), "0".into()),
        ("STEWARD_IDENTITY__REQUESTS_PER_SECOND_PER_KEY".into(), "0".into()),
        ("STEWARD_POLICY__SIGNING_KEY".into(), "bench-signing-key-0123456789abcdef0123".into()),
        ("STEWARD_POLICY__CONSTITUTION".into(), root.join("config/constitution.toml").display().to_string()),
        ("STEWARD_MODERATION__MODEL_DIR".into(), root.join(".models/all-minilm-l6-v2").display().to_string()),
        ("STEWARD_MODERATION__CLASSIFIER_DIR".into(), root.join("config/classifiers").display().to_string()),
        ("STEWARD_MODERATION__SEMANTIC".into(), if config.semantic { "on" } else { "off" }.into()),
        ("STEWARD_CONFIG_DIR".into(), root.join("config").display().to_string()),
    ];
    if config.overlapped {
        vars.push(("STEWARD_MODERATION__DISPATCH".into(), "overlapped".into()));
    }
    if config.full {
        let admin = std::env::var("STEWARD_BENCH_POSTGRES_URL").unwrap();
        let db = steward::db::Database::connect(&admin, 1).await.expect("postgres");
        sqlx::query(&format!("CREATE DATABASE {run}")).execute(db.pool()).await.expect("create database");
        let (base, _) = admin.rsplit_once('/').expect("postgres url with a database");
        vars.push(("STEWARD_DATABASE__URL".into(), format!("{base}/{run}")));
        vars.push(("STEWARD_REDIS__URL".into(), std::env::var("STEWARD_BENCH_REDIS_URL").unwrap()));
        vars.push(("STEWARD_REDIS__KEY_PREFIX".into(), format!("{run}:")));
        vars.push(("STEWARD_KAFKA__BROKERS".into(), format!("[\"{}\"]", std::env::var("STEWARD_BENCH_KAFKA").unwrap())));
        vars.push(("STEWARD_KAFKA__CONVERSATION_TOPIC".into(), format!("{run}.conversation")));
        vars.push(("STEWARD_KAFKA__TRAINING_TOPIC".into(), format!("{run}.training")));
    } else {
        vars.push(("STEWARD_DATABASE__URL".into(), format!("sqlite://{}?mode=rwc", dir.join(format!("{run}.db")).display())));
    }
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    StewardEnv { binary: config.binary.clone(), root: root.clone(), vars }
}

async fn start_steward(env: &StewardEnv, port: u16, log: &Path) -> (Proc, String) {
    // The first start with the semantic layer on may embed the exemplars (`steward moderation prepare` does it ahead).
    start_steward_under(env, &[], port, log, Duration::from_secs(300)).await
}

/// Steward run by `wrapper` (e.g. valgrind; empty: directly), healthy within `limit`, and a chat key.
async fn start_steward_under(env: &StewardEnv, wrapper: &[String], port: u16, log: &Path, limit: Duration) -> (Proc, String) {
    let key = env.create_key();
    let proc = env.serve_under(wrapper, log);
    wait_healthy("steward", &format!("http://127.0.0.1:{port}/healthz"), limit).await;
    (proc, key)
}

struct Row {
    target: String,
    clients: usize,
    outcome: Outcome,
    rss_kib: u64,
    peak_kib: u64,
}

fn print_table(rows: &[Row]) {
    let p = stats::percentile_of;
    println!("\n| target | clients | TTFT p50 ms | TTFT p99 ms | completion p50 ms | completion p99 ms | req/s | failed / no content | RSS MiB (peak) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let o = &row.outcome;
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} / {} | {:.1} ({:.1}) |",
            row.target,
            row.clients,
            p(&o.ttft_ms, 50.0),
            p(&o.ttft_ms, 99.0),
            p(&o.completion_ms, 50.0),
            p(&o.completion_ms, 99.0),
            o.rate(),
            o.failures,
            o.empty,
            row.rss_kib as f64 / 1024.0,
            row.peak_kib as f64 / 1024.0
        );
    }
}

const NGINX: &str = "nginx";
const ACTIX_PROXY: &str = "pass-through proxy (per-worker pool)";

/// Each target's throughput as a share of the upstream alone's and of both
/// floors (the actix pass-through proxy, per-worker pool, and nginx) at the
/// same concurrency, with its completion p50 as a multiple of nginx's.
fn print_shares(rows: &[Row]) {
    let find = |target: &str, clients: usize| rows.iter().find(|r| r.target == target && r.clients == clients);
    let p50 = |row: &Row| stats::percentile_of(&row.outcome.completion_ms, 50.0);
    for row in rows.iter().filter(|r| r.target != "upstream alone") {
        let share = |base: Option<&Row>| base.map_or("—".to_owned(), |b| format!("{:.0}%", 100.0 * row.outcome.rate() / b.outcome.rate()));
        let times = find(NGINX, row.clients).map_or("—".to_owned(), |n| format!("{:.1}×", p50(row) / p50(n)));
        println!(
            "{} at c={}: {:.0} req/s, {} of the upstream alone, {} of the actix pass-through, {} of nginx; completion p50 {times} nginx's",
            row.target,
            row.clients,
            row.outcome.rate(),
            share(find("upstream alone", row.clients)),
            share(find(ACTIX_PROXY, row.clients)),
            share(find(NGINX, row.clients)),
        );
    }
}

async fn run_levels(rows: &mut Vec<Row>, name: &str, proc: &Proc, target: &Target, levels: &[usize], warmup: Duration, measure: Duration) {
    for &clients in levels {
        let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(clients.max(1)).build().expect("client");
        let outcome = closed_loop(&http, target, clients, warmup, measure).await;
        let (rss_kib, peak_kib) = proc.memory_kib();
        eprintln!("{name} c={clients}: {:.0} req/s, {} failed, {} without content", outcome.rate(), outcome.failures, outcome.empty);
        rows.push(Row { target: name.to_owned(), clients, outcome, rss_kib, peak_kib });
    }
}

/// Steward (embedded, semantic layer off) over two replay upstreams: every
/// level with both up, then one level (c=64, or the highest below it) during
/// which one of them is killed (SIGKILL) halfway through the measurement.
async fn two_upstreams(rows: &mut Vec<Row>, replay: &Replay, up_port: u16, dir: &Path, levels: &[usize], warmup: Duration, measure: Duration) {
    let config =
        Config { name: "embedded-off".into(), semantic: false, overlapped: false, full: false, binary: env!("CARGO_BIN_EXE_steward").into(), root: root() };
    let tokens = replay.tokens;
    for killed in [false, true] {
        let second_port = free_port();
        let second = process::helper("upstream", second_port, replay.to_args());
        wait_healthy("upstream", &format!("http://127.0.0.1:{second_port}/health"), Duration::from_secs(10)).await;
        let upstreams = format!("[{{name=\"a\",base_url=\"http://127.0.0.1:{up_port}/v1\"}},{{name=\"b\",base_url=\"http://127.0.0.1:{second_port}/v1\"}}]");
        let port = free_port();
        let env = steward_env(&config, up_port, port, dir, &[("STEWARD_SLM__UPSTREAMS", upstreams), ("STEWARD_SLM__MAX_CONCURRENT", "0".into())]).await;
        let (steward, key) = start_steward(&env, port, &dir.join(format!("steward-two-{killed}.log"))).await;
        let target = chat_target(port, key, tokens);
        if !killed {
            run_levels(rows, "steward over two upstreams", &steward, &target, levels, warmup, measure).await;
            continue;
        }
        let level = levels.iter().copied().filter(|c| *c <= 64).max().unwrap_or(1);
        let kill = async {
            tokio::time::sleep(warmup + measure / 2).await;
            drop(second);
        };
        let (mut killed_rows, one_level) = (Vec::new(), [level]);
        tokio::join!(run_levels(&mut killed_rows, "steward over two upstreams, one killed mid-run", &steward, &target, &one_level, warmup, measure), kill);
        rows.extend(killed_rows);
    }
}

fn main() {
    let role = std::env::var("STEWARD_BENCH_ROLE").unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = || args[0].parse().expect("port");
    match role.as_str() {
        "upstream" => return upstream::serve(port(), Replay::from_args(&args[1..])).expect("upstream"),
        "proxy" => return proxy::serve(port(), args[1].parse().expect("upstream port"), args[2] == "shared").expect("proxy"),
        _ => {}
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime").block_on(bench());
}

async fn bench() {
    let replay = Replay {
        tokens: env_or("STEWARD_BENCH_TOKENS", 32),
        first_delay: Duration::from_micros(env_or("STEWARD_BENCH_FIRST_DELAY_US", 0)),
        token_delay: Duration::from_micros(env_or("STEWARD_BENCH_TOKEN_DELAY_US", 0)),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::var("STEWARD_BENCH_MODE").as_deref() == Ok("idle") {
        return idle::run(dir.path()).await;
    }
    let levels: Vec<usize> =
        std::env::var("STEWARD_BENCH_CLIENTS").unwrap_or_else(|_| "1,16,64,256".into()).split(',').filter_map(|v| v.trim().parse().ok()).collect();
    let warmup = Duration::from_secs_f64(env_or("STEWARD_BENCH_WARMUP_SECONDS", 1.0));
    let measure = Duration::from_secs_f64(env_or("STEWARD_BENCH_SECONDS", 5.0));
    let up_port = free_port();
    let upstream = process::helper("upstream", up_port, replay.to_args());
    wait_healthy("upstream", &format!("http://127.0.0.1:{up_port}/health"), Duration::from_secs(10)).await;
    match std::env::var("STEWARD_BENCH_MODE").as_deref() {
        Ok("instructions") => return instructions::run(&replay, up_port, dir.path()).await,
        Ok("costs") => return costs::run(&replay, up_port, dir.path()).await,
        Ok("scale") => {
            let rows = scale::run(&replay, up_port, dir.path()).await;
            print_table(&rows);
            return;
        }
        _ => {}
    }
    println!(
        "replay upstream: {} tokens, first-token delay {:?}, per-token delay {:?}; {warmup:?} warm-up then {measure:?} per level",
        replay.tokens, replay.first_delay, replay.token_delay
    );

    let tokens = replay.tokens;
    let direct = Target {
        url: format!("http://127.0.0.1:{up_port}/v1/chat/completions"),
        bearer: None,
        body: Arc::new(move |n| {
            json!({
                "model": "replay", "stream": true, "stream_options": { "include_usage": true }, "max_tokens": tokens,
                "messages": [{ "role": "system", "content": "You are a helpful assistant." }, { "role": "user", "content": prompt(n) }],
            })
        }),
        content_marker: b"\"content\":",
    };
    let mut rows = Vec::new();
    run_levels(&mut rows, "upstream alone", &upstream, &direct, &levels, warmup, measure).await;
    // The floor for a gateway on this stack: a pass-through proxy (`STEWARD_BENCH_PROXY`: per-worker, shared or none).
    for pool in std::env::var("STEWARD_BENCH_PROXY").unwrap_or_else(|_| "per-worker".into()).split(',').filter(|p| *p == "per-worker" || *p == "shared") {
        let port = free_port();
        let proxy = process::helper("proxy", port, vec![up_port.to_string(), pool.to_owned()]);
        wait_healthy("proxy", &format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10)).await;
        let through = Target { url: format!("http://127.0.0.1:{port}/v1/chat/completions"), ..direct.clone() };
        run_levels(&mut rows, &format!("pass-through proxy ({pool} pool)"), &proxy, &through, &levels, warmup, measure).await;
    }
    // The second floor: nginx, the proxy everyone already runs (`STEWARD_BENCH_NGINX=off` skips it).
    match nginx::binary().filter(|_| std::env::var("STEWARD_BENCH_NGINX").as_deref() != Ok("off")) {
        Some(binary) => {
            let port = free_port();
            let nginx = nginx::serve(binary, port, &[up_port], dir.path());
            wait_healthy("nginx", &format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10)).await;
            let through = Target { url: format!("http://127.0.0.1:{port}/v1/chat/completions"), ..direct.clone() };
            run_levels(&mut rows, NGINX, &nginx, &through, &levels, warmup, measure).await;
        }
        None => println!("nginx: not run (not installed: apt-get install nginx; or STEWARD_BENCH_NGINX=off)"),
    }

    for config in configs() {
        let port = free_port();
        let env = steward_env(&config, up_port, port, dir.path(), &[]).await;
        let log = dir.path().join(format!("steward-{}.log", config.name.replace(' ', "-")));
        let (steward, key) = start_steward(&env, port, &log).await;
        let (rss, _) = steward.memory_kib();
        println!("steward {}: RSS at rest {:.1} MiB", config.name, rss as f64 / 1024.0);
        let target = chat_target(port, key, tokens);
        run_levels(&mut rows, &format!("steward {}", config.name), &steward, &target, &levels, warmup, measure).await;
    }
    if std::env::var("STEWARD_BENCH_TWO_UPSTREAMS").as_deref() != Ok("off") {
        two_upstreams(&mut rows, &replay, up_port, dir.path(), &levels, warmup, measure).await;
    }
    print_table(&rows);
    print_shares(&rows);
    let at = |target: &str| rows.iter().find(|r| r.target == target && r.clients == 1);
    for base_name in ["upstream alone", NGINX] {
        let Some(base) = at(base_name) else { continue };
        for row in rows.iter().filter(|r| r.clients == 1 && r.target != "upstream alone" && r.target != base_name) {
            let med = stats::percentile_of;
            println!(
                "{} at c=1, over {base_name}: TTFT p50 {:+.3} ms, p99 {:+.3} ms; completion p50 {:+.3} ms",
                row.target,
                med(&row.outcome.ttft_ms, 50.0) - med(&base.outcome.ttft_ms, 50.0),
                med(&row.outcome.ttft_ms, 99.0) - med(&base.outcome.ttft_ms, 99.0),
                med(&row.outcome.completion_ms, 50.0) - med(&base.outcome.completion_ms, 50.0),
            );
        }
    }
    drop(upstream);
}
