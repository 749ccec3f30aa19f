//! The API description served at `/openapi.json`, derived with `utoipa` from
//! the handlers' own request and response types and the `#[utoipa::path]`
//! beside each handler, so it changes with the code it describes. Event
//! streams are described event by event ([`ChatEvent`], [`TurnEventSchema`]):
//! each event's `data` is a JSON string whose schema is the type it is
//! serialised from (`contentMediaType`/`contentSchema`), which is how
//! schemathesis checks a stream (tests/api/fuzz.rs).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Steward",
        description = "A governed chat runtime: every turn moderated, judged under a hashed constitution, and traced. \
                       Errors are JSON {code, type, status, message} with a stable code."
    ),
    paths(
        crate::gateway::chat::chat_stream,
        crate::gateway::chat_socket,
        crate::gateway::openai::completions,
        crate::orchestrator::api::step,
        crate::orchestrator::api::stream,
        crate::orchestrator::api::socket,
        crate::training::api::enable,
        crate::training::api::renew,
        crate::training::api::disable,
        crate::training::api::status,
        crate::policy::api::active,
        crate::policy::api::activate,
        crate::policy::api::by_hash,
        crate::policy::api::dry_run_route,
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
        crate::ops::openapi,
    ),
    components(
        schemas(
            crate::orchestrator::DeltaData,
            crate::orchestrator::RefusalData,
            crate::orchestrator::ErrorData,
            crate::orchestrator::DoneData,
            crate::orchestrator::SessionData,
            ChatEvent,
            TurnEventSchema,
            CompletionChunkEvent,
        ),
        responses(Problem)
    ),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The document, as served (built once).
pub fn json() -> &'static str {
    // Serialising a document of plain strings and maps cannot fail; an empty object if it ever did.
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
    &DOCUMENT
}

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

/// API keys (`steward keys create`) as bearer tokens.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("an API key from `steward keys create`".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_in_the_document_names_a_component_it_holds() {
        let document: serde_json::Value = serde_json::from_str(json()).unwrap();
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]) {
            let path: Vec<&str> = reference.trim_start_matches("#/").split('/').collect();
            let target = path.iter().fold(&document, |node, key| &node[*key]);
            assert!(!target.is_null(), "{reference} points nowhere");
        }
        assert_eq!(document["paths"].as_object().unwrap().len(), 15, "every route is described");
    }
}
