//! One trace end to end: a real `steward` process exporting over OTLP/HTTP
//! to a receiver in this test (decoding with `opentelemetry-proto`), relaying
//! to the real broker, answering with the real model. A turn sent with a
//! `traceparent` gives a span tree under the caller's span: the turn, its
//! input moderation, the model call (GenAI attributes) and the Kafka publishes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use steward::identity::{Capability, KeyStore, TenantId};

use crate::helpers::{read_sse, unique};
use crate::instances::{shared_database, Instance};

type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on a free port: every exported span, decoded.
fn receiver() -> (String, Received) {
    let spans: Received = Arc::default();
    let kept = spans.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let kept = kept.clone();
        App::new().app_data(web::PayloadConfig::new(16 << 20)).route(
            "/v1/traces",
            web::post().to(move |body: web::Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                    let spans = request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
                    kept.lock().unwrap().extend(spans);
                    HttpResponse::Ok().content_type("application/x-protobuf").finish()
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/v1/traces"), spans)
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()).and_then(|v| v.value)
}

fn string(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(AnyValue::StringValue(s)) => s,
        other => panic!("{key} on {:?}: {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AnyValue::IntValue(i)) => i,
        other => panic!("{key} on {:?}: {other:?}", span.name),
    }
}

#[tokio::test]
async fn a_supplied_traceparent_gives_one_span_tree_from_the_turn_to_the_model_call_and_the_kafka_publish() {
    let (endpoint, received) = receiver();
    let (url, db) = shared_database().await;
    let tenant = unique("tenant-");
    let (_, key) = KeyStore::new(db.clone()).create(&TenantId::parse(&tenant).unwrap(), &[Capability::Chat]).await.unwrap();
    let topic = unique("conversation.events.");
    let brokers = format!("[\"{}\"]", crate::broker::shared_broker());
    let env = [
        ("STEWARD_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("STEWARD_KAFKA__BROKERS", brokers.as_str()),
        ("STEWARD_KAFKA__CONVERSATION_TOPIC", topic.as_str()),
    ];
    let instance = Instance::start_with(&url, &format!("{}:", unique("steward-test-")), &env).await;
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");

    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/stream", instance.address))
        .bearer_auth(key.expose())
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "message": "Name a colour.", "max_tokens": 8 }))
        .send()
        .await
        .unwrap();
    let sse = read_sse(response).await;
    assert_eq!(sse.first("session")["trace_id"], trace_id);
    let session_id = sse.first("session")["session_id"].as_str().unwrap().to_owned();

    let hex = |bytes: &[u8]| hex::encode(bytes);
    let started = Instant::now();
    let spans = loop {
        let spans: Vec<Span> = received.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
        if spans.iter().filter(|s| s.name.starts_with("publish ")).count() >= 3 {
            break spans;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "spans received: {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named =
        |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name}: {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));

    let turn = named("turn chat_stream");
    assert_eq!(hex(&turn.parent_span_id), caller_span, "the turn continues the caller's span");
    assert_eq!(string(turn, "gen_ai.conversation.id"), session_id);
    let moderation = named("moderation input");
    assert_eq!(hex(&moderation.parent_span_id), hex(&turn.span_id));
    assert_eq!(string(moderation, "steward.moderation.decision"), "allow");
    let config: toml::Table = std::fs::read_to_string(crate::helpers::manifest_dir().join("config/default.toml")).unwrap().parse().unwrap();
    let model = config["slm"]["model"].as_str().unwrap();
    let call = named(&format!("chat {model}"));
    assert_eq!(hex(&call.parent_span_id), hex(&turn.span_id));
    assert_eq!(string(call, "gen_ai.operation.name"), "chat");
    assert_eq!(string(call, "gen_ai.request.model"), model);
    assert_eq!(int(call, "gen_ai.request.max_tokens"), 8);
    assert!(int(call, "gen_ai.usage.output_tokens") > 0);
    assert!(int(call, "gen_ai.usage.input_tokens") > 0);
    assert_eq!(string(call, "gen_ai.conversation.id"), session_id);
    assert!(matches!(attribute(call, "gen_ai.response.finish_reasons"), Some(AnyValue::ArrayValue(_))));
    assert!(attribute(call, "steward.time_to_first_chunk_ms").is_some());
    for publish in spans.iter().filter(|s| s.name.starts_with("publish ")) {
        assert_eq!(hex(&publish.parent_span_id), hex(&turn.span_id), "{}", publish.name);
        assert_eq!(string(publish, "messaging.system"), "kafka");
        assert_eq!(string(publish, "messaging.destination.name"), topic);
        assert_eq!(string(publish, "messaging.operation.type"), "send");
    }
}
