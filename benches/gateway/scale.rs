//! `STEWARD_BENCH_MODE=scale`: the first point of the many-instances curve.
//! Steward with PostgreSQL, Redis and the broker (as `costs.rs` needs them),
//! behind nginx (`least_conn`, keep-alive): first one instance pinned to
//! core 0 (`taskset -c 0`), then two, pinned to cores 0 and 1, sharing the
//! database, Redis and the broker. The clients, nginx, the replay upstream and
//! the services share the same two cores, so this measures what a second
//! instance adds on this machine, not what it adds on its own host.

use std::path::Path;
use std::time::Duration;

use super::process::{free_port, wait_healthy};
use super::upstream::Replay;
use super::{chat_target, env_or, nginx, run_levels, start_steward_under, steward_env, Config, Row};

pub async fn run(replay: &Replay, up_port: u16, dir: &Path) -> Vec<Row> {
    let binary = nginx::binary().expect("scale needs nginx (apt-get install nginx)");
    let levels: Vec<usize> =
        std::env::var("STEWARD_BENCH_CLIENTS").unwrap_or_else(|_| "16,64".into()).split(',').filter_map(|v| v.trim().parse().ok()).collect();
    let warmup = Duration::from_secs_f64(env_or("STEWARD_BENCH_WARMUP_SECONDS", 1.0));
    let measure = Duration::from_secs_f64(env_or("STEWARD_BENCH_SECONDS", 5.0));
    let config =
        Config { name: "full-off".into(), semantic: false, overlapped: false, full: true, binary: env!("CARGO_BIN_EXE_steward").into(), root: super::root() };
    // Both instances share one database, Redis prefix and topics: the second takes the first's settings.
    let first_port = free_port();
    let env = steward_env(&config, up_port, first_port, dir, &[]).await;
    let pinned = |core: usize| vec!["taskset".to_owned(), "-c".to_owned(), core.to_string()];
    let (first, key) = start_steward_under(&env, &pinned(0), first_port, &dir.join("steward-scale-0.log"), Duration::from_secs(300)).await;
    let second_port = free_port();
    let second_env = env.clone_with_port(first_port, second_port);
    let tokens = replay.tokens;
    let mut rows = Vec::new();
    for instances in [1usize, 2] {
        let ports: Vec<u16> = [first_port, second_port][..instances].to_vec();
        let _second = (instances == 2).then(|| second_env.serve_under(&pinned(1), &dir.join("steward-scale-1.log")));
        if instances == 2 {
            wait_healthy("steward", &format!("http://127.0.0.1:{second_port}/healthz"), Duration::from_secs(300)).await;
        }
        let port = free_port();
        let proxy = nginx::serve(binary, port, &ports, dir);
        wait_healthy("nginx", &format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10)).await;
        let key = key.clone();
        let target = chat_target(port, key, tokens);
        let name = format!("{instances} steward instance{} behind nginx, pinned", if instances == 1 { "" } else { "s" });
        run_levels(&mut rows, &name, &proxy, &target, &levels, warmup, measure).await;
    }
    drop(first);
    rows
}
