//! A WebSocket client that starts a long turn and never reads: the turn ends
//! (`client_too_slow`), the model is freed, and Steward's memory stays put.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use steward::identity::{Capability, KeyStore, TenantId};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::backpressure::{connect_small, stalling_instance, until_the_model_is_freed, Stall};
use crate::helpers::unique;
use crate::instances::shared_database;
use crate::moderation::PrivateModelServer;

#[tokio::test]
async fn a_socket_that_never_reads_loses_its_turn_as_client_too_slow_and_frees_the_model_in_bounded_memory() {
    let model = PrivateModelServer::with_context(8192).await;
    let (url, db) = shared_database().await;
    let (_, key) = KeyStore::new(db.clone()).create(&TenantId::parse(&unique("deaf-")).unwrap(), &[Capability::Chat]).await.unwrap();
    let steward = stalling_instance(&model, &url).await;
    let mut request = format!("{}/v1/chat/stream", steward.address.replace("http://", "ws://")).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", key.expose()).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::client_async(request, connect_small(&steward.address).await).await.unwrap();
    let turn = json!({ "type": "turn", "message": "Write a very long story about the sea.", "max_tokens": 4000, "temperature": 0 });
    socket.send(Message::text(turn.to_string())).await.unwrap();
    // Read up to the first delta, then never again.
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), socket.next()).await.expect("a first delta").unwrap().unwrap();
        if frame.to_text().is_ok_and(|t| t.contains("\"delta\"")) {
            break;
        }
    }

    let Stall { freed_after, resident_at_stall, resident_peak } = until_the_model_is_freed(&model, &steward).await;
    let (_, predicted) = model.counters().await;
    let growth = resident_peak.saturating_sub(resident_at_stall);
    eprintln!("deaf socket: model freed {freed_after:?} after the client stopped reading, {predicted} tokens generated; steward RSS +{growth} KiB");
    assert!(predicted < 4000.0, "the deadline cut the generation short: {predicted} tokens");
    assert!(growth < 4096, "RSS grew {growth} KiB while the socket was not read");

    // Reading again: what was sent, then the turn's end as client_too_slow.
    let mut frames = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
        let Ok(text) = frame.to_text() else { continue };
        let done = text.contains("\"type\":\"done\"");
        frames.push(text.to_owned());
        if done {
            break;
        }
    }
    assert!(frames.iter().any(|f| f.contains("client_too_slow")), "{:?}", frames.iter().rev().take(3).collect::<Vec<_>>());
    let metrics = reqwest::get(format!("{}/metrics", steward.address)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"client_too_slow\"} 1"), "{metrics}");
}
