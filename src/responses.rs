//! The shapes the API description ([`crate::openapi`]) names beside each
//! handler: the error responses every operation shares, and the event
//! streams described event by event. They live below both the handlers and
//! the document, so neither imports the other.

use std::collections::BTreeMap;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{RefOr, Response};
use utoipa::{PartialSchema, ToSchema};

use crate::error::ErrorBody;

/// Any error response: `code` names it (the table of error codes in the README).
#[derive(utoipa::ToResponse)]
#[response(description = "An error; its stable `code` says which.", content_type = "application/problem+json")]
pub struct Problem(#[allow(dead_code)] ErrorBody);

/// The errors of every operation behind a key: 401 (no key, or an unknown
/// or revoked one) and 429 (over the tenant's limits, or too many unknown
/// keys from one address).
pub struct KeyErrors;

impl utoipa::IntoResponses for KeyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[401, 429])
    }
}

/// The errors of every operation that reads a JSON body: 400 (malformed or
/// invalid), 413 (over the size limit) and 415 (not `application/json`).
pub struct BodyErrors;

impl utoipa::IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[400, 413, 415])
    }
}

/// A [`Problem`] response for each of `statuses`.
pub fn problems(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses.iter().map(|status| (status.to_string(), RefOr::Ref(utoipa::openapi::Ref::from_response_name("Problem")))).collect()
}

/// An event of a stream: `event` is one of `events`, and `data` the JSON of
/// the component schema named beside it.
fn event_stream(description: &str, events: &[(&str, &str)]) -> RefOr<Schema> {
    let mut one_of = OneOfBuilder::new().description(Some(description));
    for (event, data) in events {
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .content_schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(*data))));
        let item = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([*event])))
            .required("event")
            .property("data", data)
            .required("data");
        one_of = one_of.item(item);
    }
    one_of.into()
}

/// A `/v1/chat/stream` event: `session`, then `delta`s, at most one `refusal` or `error`, then `done`.
pub struct ChatEvent;

impl PartialSchema for ChatEvent {
    fn schema() -> RefOr<Schema> {
        event_stream(
            "One server-sent event of a chat turn: `session`, then `delta`s, at most one `refusal` or `error`, then `done`.",
            &[("session", "SessionData"), ("delta", "DeltaData"), ("refusal", "RefusalData"), ("error", "ErrorData"), ("done", "DoneData")],
        )
    }
}

impl ToSchema for ChatEvent {}

/// A `/v1/conversation/stream` event: as a chat turn's, without `session`.
pub struct TurnEventSchema;

impl PartialSchema for TurnEventSchema {
    fn schema() -> RefOr<Schema> {
        event_stream(
            "One server-sent event of an orchestrator turn: `delta`s, at most one `refusal` or `error`, then `done`.",
            &[("delta", "DeltaData"), ("refusal", "RefusalData"), ("error", "ErrorData"), ("done", "DoneData")],
        )
    }
}

impl ToSchema for TurnEventSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "TurnEvent".into()
    }
}

/// A `/v1/chat/completions` stream event (OpenAI's format): `data` is a
/// `chat.completion.chunk`, an `{"error": …}` object, or `[DONE]` last.
pub struct CompletionChunkEvent;

impl PartialSchema for CompletionChunkEvent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("One OpenAI streaming event: `data` is a chat.completion.chunk, an error object, or [DONE] last."))
            .schema_type(Type::Object)
            .property("data", ObjectBuilder::new().schema_type(Type::String))
            .required("data")
            .into()
    }
}

impl ToSchema for CompletionChunkEvent {
    fn name() -> std::borrow::Cow<'static, str> {
        "CompletionChunk".into()
    }
}
