//! `STEWARD_BENCH_MODE=instructions`: a turn's CPU as a stable number. Steward
//! (release build) runs under valgrind's callgrind against the replay
//! upstream; after `STEWARD_BENCH_WARMUP_TURNS` (20) turns the counters are
//! zeroed, `STEWARD_BENCH_TURNS` (200) more turns run one after another
//! (c=1, 32 tokens, distinct prompts), and the instructions executed by every
//! thread in between, divided by the turns, are the figure. Unlike a time it
//! does not move with this machine's other load. (It leaves out the kernel's
//! work: system calls and the wake-ups of threads count only their user side.)
//! `STEWARD_BENCH_CALLGRIND_DIR` keeps each dump, for a profile.

use std::path::Path;
use std::time::Duration;

use super::load::closed_loop_turns;
use super::process::free_port;
use super::upstream::Replay;
use super::{chat_target, configs, env_or, start_steward_under, steward_env};

/// Instructions per turn of each configuration (`STEWARD_BENCH_STEWARD`, by default
/// `embedded-off,embedded-on`).
pub async fn run(replay: &Replay, up_port: u16, dir: &Path) {
    let (warmup, turns) = (env_or("STEWARD_BENCH_WARMUP_TURNS", 20u64), env_or("STEWARD_BENCH_TURNS", 200u64));
    println!("instructions per turn: callgrind, {warmup} turns of warm-up then {turns} turns at c=1, {} tokens each", replay.tokens);
    let mut results = Vec::new();
    for config in configs() {
        let port = free_port();
        // Everything runs some 50 times slower under valgrind: deadlines are widened, not lifted.
        let slow = [("STEWARD_SLM__FIRST_TOKEN_TIMEOUT", "120s".to_owned()), ("STEWARD_SLM__IDLE_TIMEOUT", "120s".to_owned())];
        let env = steward_env(&config, up_port, port, dir, &slow).await;
        let out = dir.join(format!("callgrind.{}", config.name.replace([' ', '(', ')'], "")));
        let wrapper = ["valgrind".to_owned(), "--tool=callgrind".to_owned(), format!("--callgrind-out-file={}", out.display())];
        let log = dir.join(format!("steward-callgrind-{}.log", config.name.replace(' ', "-")));
        let (steward, key) = start_steward_under(&env, &wrapper, port, &log, Duration::from_secs(900)).await;
        let tokens = replay.tokens;
        let target = chat_target(port, key, tokens);
        let http = reqwest::Client::builder().tcp_nodelay(true).build().expect("client");
        let warm = closed_loop_turns(&http, &target, 0, warmup).await;
        assert_eq!(warm.completion_ms.len() as u64, warmup, "every warm-up turn was answered ({} failed)", warm.failures);
        control(steward.id(), "--zero");
        let measured = closed_loop_turns(&http, &target, warmup, turns).await;
        assert_eq!(measured.completion_ms.len() as u64, turns, "every measured turn was answered ({} failed)", measured.failures);
        control(steward.id(), "--dump=measured");
        let dump = latest_dump(&out);
        let total = total_instructions(&dump);
        keep_dump(&dump, &out);
        println!("steward {}: {:.2} M instructions per turn ({total} over {turns} turns)", config.name, total as f64 / turns as f64 / 1e6);
        results.push((config.name.clone(), total as f64 / turns as f64));
        drop(steward);
    }
    println!("\n| configuration | instructions per turn |\n|---|---|");
    for (name, per_turn) in results {
        println!("| steward {name} | {:.2} M |", per_turn / 1e6);
    }
}

/// Sends callgrind `option` to the running process `pid` (callgrind_control, through vgdb).
fn control(pid: u32, option: &str) {
    let out = std::process::Command::new("callgrind_control").arg(option).arg(pid.to_string()).output().expect("callgrind_control");
    assert!(out.status.success(), "callgrind_control {option} failed: {}", String::from_utf8_lossy(&out.stderr));
    // The dump is written by the target process, asynchronously.
    std::thread::sleep(Duration::from_secs(2));
}

/// The newest dump file callgrind wrote beside `out` (`out.<pid>.<n>` or `out.<n>`).
fn latest_dump(out: &Path) -> std::path::PathBuf {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .expect("a callgrind dump")
}

/// Copies the dump into `STEWARD_BENCH_CALLGRIND_DIR`, when set, for
/// `callgrind_annotate --inclusive=yes` (the run's own directory is removed).
fn keep_dump(dump: &Path, out: &Path) {
    let Ok(dir) = std::env::var("STEWARD_BENCH_CALLGRIND_DIR") else { return };
    std::fs::create_dir_all(&dir).expect("the callgrind directory");
    let kept = Path::new(&dir).join(out.file_name().expect("the dump's name"));
    std::fs::copy(dump, &kept).expect("the dump copied");
    println!("kept the dump as {}", kept.display());
}

/// The `summary:` (or `totals:`) line of a dump: instructions executed (Ir).
fn total_instructions(dump: &Path) -> u64 {
    let text = std::fs::read_to_string(dump).expect("dump readable");
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a summary line")
}
