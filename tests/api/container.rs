//! The OCI image, built and run with Podman as an operator would, against
//! the real model server, PostgreSQL, Redis and the broker: it becomes
//! healthy, streams a turn, and on SIGTERM stops cleanly with the turn's
//! events in Kafka.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use steward::identity::{Capability, KeyStore, TenantId};

use crate::broker::{shared_broker, wait_for};
use crate::helpers::{manifest_dir, read_sse, slm_url, unique, SIGNING_KEY};
use crate::instances::shared_database;
use crate::training::redis_url;

/// Removes the container however the test ends.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.0]);
    }
}

fn podman(args: &[&str]) -> std::process::Output {
    let conf = manifest_dir().join(".run/containers.conf");
    Command::new("podman").env("CONTAINERS_CONF", conf).args(args).output().expect("podman (scripts/test.sh installs it)")
}

#[tokio::test]
async fn the_image_serves_a_turn_and_stops_on_sigterm_with_its_events_in_kafka() {
    let built =
        Command::new(manifest_dir().join("scripts/container.sh")).args(["build", env!("CARGO_BIN_EXE_steward")]).current_dir(manifest_dir()).output().unwrap();
    assert!(built.status.success(), "image build failed: {}", String::from_utf8_lossy(&built.stderr));
    let image = String::from_utf8(built.stdout).unwrap().trim().to_owned();

    let (url, db) = shared_database().await;
    let tenant = unique("boxed-");
    let (_, key) = KeyStore::new(db.clone()).create(&TenantId::parse(&tenant).unwrap(), &[Capability::Chat]).await.unwrap();
    let topic = unique("conversation.events.");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let name = unique("steward-test-");
    let env = [
        format!("STEWARD_SERVER__BIND=127.0.0.1:{port}"),
        format!("STEWARD_DATABASE__URL={url}"),
        format!("STEWARD_REDIS__URL={}", redis_url()),
        format!("STEWARD_REDIS__KEY_PREFIX={name}:"),
        format!("STEWARD_SLM__BASE_URL={}", slm_url()),
        format!("STEWARD_KAFKA__BROKERS=[\"{}\"]", shared_broker()),
        format!("STEWARD_KAFKA__CONVERSATION_TOPIC={topic}"),
        format!("STEWARD_POLICY__SIGNING_KEY={SIGNING_KEY}"),
        "STEWARD_SERVER__SHUTDOWN_GRACE=2s".to_owned(),
    ];
    let mut args = vec!["run", "-d", "--name", &name, "--runtime", "runc", "--ulimit", "host", "--network", "host"];
    for variable in &env {
        args.extend(["-e", variable]);
    }
    args.push(&image);
    let started = podman(&args);
    let _removed = Removed(name.clone());
    assert!(started.status.success(), "podman run: {}", String::from_utf8_lossy(&started.stderr));
    let address = format!("http://127.0.0.1:{port}");
    let mut healthy = false;
    for _ in 0..240 {
        if reqwest::get(format!("{address}/healthz")).await.is_ok_and(|r| r.status() == 200) {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = || String::from_utf8_lossy(&podman(&["logs", &name]).stderr).into_owned();
    assert!(healthy, "the container never answered /healthz: {}", logs());
    assert!(podman(&["healthcheck", "run", &name]).status.success(), "its HEALTHCHECK fails");
    let uid = String::from_utf8(podman(&["inspect", "--format", "{{.Config.User}}", &name]).stdout).unwrap();
    assert_eq!(uid.trim(), "10001:10001", "not root");

    let response = reqwest::Client::new()
        .post(format!("{address}/v1/chat/stream"))
        .bearer_auth(key.expose())
        .json(&json!({ "message": "Name a colour.", "max_tokens": 4 }))
        .send()
        .await
        .unwrap();
    let sse = read_sse(response).await;
    assert_eq!(sse.names().last(), Some(&"done"), "{:?}", sse.events);
    let session = sse.first("session")["session_id"].as_str().unwrap().to_owned();

    let stopped = podman(&["stop", "-t", "30", &name]);
    assert!(stopped.status.success(), "podman stop: {}", String::from_utf8_lossy(&stopped.stderr));
    let code = String::from_utf8(podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]).stdout).unwrap();
    let log = logs();
    assert_eq!(code.trim(), "0", "it stopped on SIGTERM by itself: {log}");
    assert!(log.contains("shutting down"), "{log}");
    let records = wait_for(&shared_broker(), &topic, 20, |r| r.iter().filter(|e| e.value["session_id"] == session.as_str()).count() >= 3).await;
    assert!(records.iter().any(|e| e.value["session_id"] == session.as_str() && e.value["type"] == "turn.completed"));
}
