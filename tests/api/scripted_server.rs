//! A model server that answers from a script: real HTTP/1.1 over a socket,
//! chunked like a model server's stream, so a mid-stream error, a stall
//! before or after the first token and a dropped connection come when a
//! test says, and the real client in Steward meets them as in production.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted server does with each model request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Streams these pieces, then `finish_reason` and `[DONE]`.
    Answer(Vec<&'static str>),
    /// Streams these pieces, then closes the connection mid-body.
    DropAfter(Vec<&'static str>),
    /// Streams these pieces, then says nothing more.
    StallAfter(Vec<&'static str>),
    /// Answers with this HTTP status.
    Status(u16),
}

/// Picks the script of a request from its last message's text.
pub type Chooser = Arc<dyn Fn(&str) -> Script + Send + Sync>;

/// A model server that follows `script` for every request, on a free port; its base URL.
pub async fn scripted(script: Script) -> String {
    scripted_by(Arc::new(move |_| script.clone())).await
}

/// A model server that follows, for each request, the script `choose` picks for it.
pub async fn scripted_by(choose: Chooser) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            tokio::spawn(serve(socket, choose.clone()));
        }
    });
    format!("http://{address}/v1")
}

/// The text of the request body's last message.
fn last_message(body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body).unwrap_or_default();
    body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or_default().to_owned()
}

async fn serve(mut socket: TcpStream, choose: Chooser) {
    // The request: headers, then a body of content-length bytes.
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let Ok(n) = socket.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                request.drain(..end + 4);
                break;
            }
        }
    }
    let script = choose(&last_message(&request));
    let pieces = match &script {
        Script::Status(status) => {
            let body = "{\"error\":{\"message\":\"scripted failure\"}}";
            let head = format!("HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
            return;
        }
        Script::Answer(pieces) | Script::DropAfter(pieces) | Script::StallAfter(pieces) => pieces.clone(),
    };
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for piece in pieces {
        if send(&mut socket, &chunk(json!({ "content": piece }), Value::Null)).await.is_err() {
            return;
        }
    }
    match script {
        Script::Answer(_) => {
            let _ = send(&mut socket, &chunk(json!({}), json!("stop"))).await;
            let _ = send(&mut socket, "data: [DONE]\n\n").await;
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        // Gone mid-body: no last chunk.
        Script::DropAfter(_) => drop(socket),
        Script::StallAfter(_) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Script::Status(_) => {}
    }
}

fn chunk(delta: Value, finish: Value) -> String {
    let body = json!({ "id": "scripted", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
    format!("data: {body}\n\n")
}

/// One HTTP chunk holding `data`.
async fn send(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    socket.flush().await
}
