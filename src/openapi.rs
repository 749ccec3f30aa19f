//! The API description served at `/openapi.json`, derived with `utoipa` from
//! the handlers' own request and response types and the `#[utoipa::path]`
//! beside each handler, so it changes with the code it describes. Event
//! streams are described event by event ([`crate::responses::ChatEvent`], …):
//! each event's `data` is a JSON string whose schema is the type it is
//! serialised from (`contentMediaType`/`contentSchema`), which is how
//! schemathesis checks a stream (tests/api/fuzz.rs).

use std::sync::LazyLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::responses::{ChatEvent, CompletionChunkEvent, Problem, TurnEventSchema};

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
        crate::gateway::moderations::moderations,
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
        serve,
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

/// Serves the document at `/openapi.json`.
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.route("/openapi.json", actix_web::web::get().to(serve));
}

/// This document (OpenAPI 3.1)
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn serve() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().content_type("application/json").body(json())
}

/// The document, as served (built once).
pub fn json() -> &'static str {
    // Serialising a document of plain strings and maps cannot fail; an empty object if it ever did.
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
    &DOCUMENT
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
        assert_eq!(document["paths"].as_object().unwrap().len(), 16, "every route is described");
    }
}
