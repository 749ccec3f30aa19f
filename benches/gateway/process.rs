//! Child processes of the bench: Steward's release binary and the replay
//! upstream (this bench binary again, in its upstream role), with their
//! memory read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Resident and peak resident memory, in KiB (`VmRSS`, `VmHWM`), of the
    /// process and its children (nginx's workers).
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let pids = std::iter::once(pid).chain(children.split_whitespace().filter_map(|p| p.parse().ok()));
        pids.map(memory_of).fold((0, 0), |(rss, peak), (r, p)| (rss + r, peak + p))
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `url` until it answers 2xx, or panics after `limit` naming `name`.
pub async fn wait_healthy(name: &str, url: &str, limit: Duration) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < limit {
        if http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} did not answer {url} within {limit:?}");
}

/// Starts a copy of this binary in `role` (`upstream`, `proxy`).
pub fn helper(role: &str, port: u16, args: Vec<String>) -> Proc {
    let exe = std::env::current_exe().expect("current exe");
    let child = Command::new(exe)
        .env("STEWARD_BENCH_ROLE", role)
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn upstream");
    Proc { child }
}

/// Which Steward binary runs, from which checkout (its `config/`, constitution and model).
#[derive(Clone)]
pub struct StewardEnv {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub vars: Vec<(String, String)>,
}

impl StewardEnv {
    /// The same settings, serving on `to` instead of `from`.
    pub fn clone_with_port(&self, from: u16, to: u16) -> Self {
        let mut env = self.clone();
        for (_, value) in &mut env.vars {
            *value = value.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
        }
        env
    }

    fn command(&self) -> Command {
        self.command_under(&[])
    }

    /// Steward's command, run by `wrapper` (a program and its arguments, e.g. valgrind) when not empty.
    fn command_under(&self, wrapper: &[String]) -> Command {
        let mut command = match wrapper.split_first() {
            None => Command::new(&self.binary),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
        };
        command.current_dir(&self.root).env_clear();
        for key in ["PATH", "HOME", "LANG", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"] {
            if let Ok(value) = std::env::var(key) {
                command.env(key, value);
            }
        }
        command.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Creates a chat key for tenant `bench` and returns it.
    pub fn create_key(&self) -> String {
        let out = self.command().args(["keys", "create", "--tenant", "bench"]).output().expect("steward keys create");
        assert!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 key").trim().to_owned()
    }

    /// Serves, run by `wrapper` (see [`StewardEnv::command_under`]), with its log written to `log`.
    pub fn serve_under(&self, wrapper: &[String], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("steward log file");
        let child = self.command_under(wrapper).arg("serve").stdout(Stdio::null()).stderr(file).spawn().expect("spawn steward");
        Proc { child }
    }
}
