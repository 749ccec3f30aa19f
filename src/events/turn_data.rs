//! The `data` of each conversation event, typed: every event type's payload
//! is built from these and nowhere else, `content_included: false` is added
//! in one place, and a test checks every field against
//! `schemas/conversation.event.v1.json` (a field added here without the
//! schema fails it).

use serde::Serialize;
use serde_json::Value;

use super::EventType;

/// What a conversation event says about its turn (never its text).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TurnData {
    /// `turn.received`.
    Received {
        route: &'static str,
        message_chars: usize,
        /// The app's own id of its end user (OpenAI's `user`), when it gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        end_user: Option<String>,
    },
    /// `turn.dispatched`: the model request was sent.
    Dispatched {
        model: String,
        max_tokens: u32,
        history_messages: usize,
        /// `after_verdict` or `overlapped` (`moderation.dispatch`).
        dispatch: &'static str,
        /// The model server of this attempt (absent when the request ended before one was read).
        #[serde(skip_serializing_if = "Option::is_none")]
        upstream: Option<String>,
        /// Which attempt of the turn (one `turn.dispatched` each).
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
    },
    /// `moderation.checked`: texts judged for `POST /v1/moderations` (never their text).
    Checked { inputs: usize, flagged: usize, input_chars: usize, categories: Vec<RefusedCategory> },
    /// `turn.upstream_failed`: an attempt failed before its first token; the turn went on elsewhere.
    UpstreamFailed { upstream: String, attempt: u32, reason: &'static str },
    /// `turn.completed`.
    Completed { model: String, finish_reason: &'static str, usage: Option<crate::slm::Usage>, duration_ms: u64 },
    /// `turn.refused`, on input or on output.
    Refused {
        stage: &'static str,
        categories: Vec<RefusedCategory>,
        /// The layer that decided (`lexicon`, `semantic_static`, `semantic`).
        #[serde(skip_serializing_if = "Option::is_none")]
        layer: Option<&'static str>,
        /// The semantic layer's score.
        #[serde(skip_serializing_if = "Option::is_none")]
        score: Option<f32>,
        /// `aborted`: refused on input under overlapped dispatch, its model request ended unread.
        #[serde(skip_serializing_if = "Option::is_none")]
        model_request: Option<&'static str>,
        /// With layer `guard`: the guard's model name.
        #[serde(skip_serializing_if = "Option::is_none")]
        guard_model: Option<String>,
        /// With layer `guard`: the digest of what the guard was asked with (`moderation::guard::GuardInfo`).
        #[serde(skip_serializing_if = "Option::is_none")]
        guard_config: Option<String>,
    },
    /// `turn.guard_skipped`: the guard gave no decision and the tenant's guard fails open.
    GuardSkipped { stage: &'static str, guard_model: String, guard_config: String, reason: &'static str },
    /// `turn.tool_call`: a call of a tool the model made, judged as output
    /// before it could reach the app (`verdict`); never its arguments, only their digest.
    ToolCall { call_id: String, name: String, arguments_digest: String, arguments_chars: usize, verdict: String },
    /// `turn.format_checked`: the answer checked against the JSON format the request asked for.
    FormatChecked {
        format: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<String>,
        valid: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `turn.cancelled`.
    Cancelled { reason: &'static str, emitted_chars: usize },
    /// `turn.failed`.
    Failed {
        code: &'static str,
        /// `admission`, `model` or `client`.
        stage: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        emitted_chars: Option<usize>,
    },
}

/// One category of a refusal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefusedCategory {
    pub code: String,
    pub category: String,
}

impl TurnData {
    /// `turn.guard_skipped`: on which `stage` (`input` or `output`), the guard
    /// named (as `info` says), and why it gave no decision.
    pub fn guard_skipped(stage: &'static str, info: Option<crate::moderation::guard::GuardInfo>, reason: &'static str) -> Self {
        let (guard_model, guard_config) = info.map(|i| (i.model, i.config_digest)).unwrap_or_default();
        Self::GuardSkipped { stage, guard_model, guard_config, reason }
    }

    pub fn kind(&self) -> EventType {
        match self {
            Self::Received { .. } => EventType::Received,
            Self::Dispatched { .. } => EventType::Dispatched,
            Self::UpstreamFailed { .. } => EventType::UpstreamFailed,
            Self::Checked { .. } => EventType::Checked,
            Self::GuardSkipped { .. } => EventType::GuardSkipped,
            Self::ToolCall { .. } => EventType::ToolCall,
            Self::FormatChecked { .. } => EventType::FormatChecked,
            Self::Completed { .. } => EventType::Completed,
            Self::Refused { .. } => EventType::Refused,
            Self::Cancelled { .. } => EventType::Cancelled,
            Self::Failed { .. } => EventType::Failed,
        }
    }

    /// The event's `data` object.
    pub fn to_value(&self) -> Value {
        let mut data = serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Default::default()));
        if let Value::Object(fields) = &mut data {
            fields.insert("content_included".into(), Value::Bool(false));
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, every optional field present.
    fn every_payload() -> Vec<TurnData> {
        let usage = crate::slm::Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 };
        vec![
            TurnData::Received { route: "chat_stream", message_chars: 12, end_user: Some("user-42".into()) },
            TurnData::Dispatched {
                model: "m".into(),
                max_tokens: 8,
                history_messages: 2,
                dispatch: "overlapped",
                upstream: Some("gpu-a".into()),
                attempt: Some(2),
            },
            TurnData::UpstreamFailed { upstream: "gpu-b".into(), attempt: 1, reason: "connect_error" },
            TurnData::Checked {
                inputs: 2,
                flagged: 1,
                input_chars: 40,
                categories: vec![RefusedCategory { code: "S9".into(), category: "indiscriminate_weapons".into() }],
            },
            TurnData::Completed { model: "m".into(), finish_reason: "stop", usage: Some(usage), duration_ms: 40 },
            TurnData::Completed { model: "m".into(), finish_reason: "length", usage: None, duration_ms: 40 },
            TurnData::Refused {
                stage: "input",
                categories: vec![RefusedCategory { code: "S1".into(), category: "violent_crimes".into() }],
                layer: Some("semantic"),
                score: Some(0.9),
                model_request: Some("aborted"),
                guard_model: Some("llama-guard-3-1b".into()),
                guard_config: Some(format!("sha256:{}", "b".repeat(64))),
            },
            TurnData::GuardSkipped {
                stage: "output",
                guard_model: "llama-guard-3-1b".into(),
                guard_config: format!("sha256:{}", "b".repeat(64)),
                reason: "timeout",
            },
            TurnData::ToolCall {
                call_id: "call_1".into(),
                name: "get_weather".into(),
                arguments_digest: format!("sha256:{}", "c".repeat(64)),
                arguments_chars: 17,
                verdict: "refuse:S9".into(),
            },
            TurnData::FormatChecked { format: "json_schema", schema: Some("person".into()), valid: false, error: Some("at `/age`: not an integer".into()) },
            TurnData::Cancelled { reason: "client_disconnected", emitted_chars: 5 },
            TurnData::Failed { code: "client_too_slow", stage: "client", emitted_chars: Some(5) },
        ]
    }

    #[test]
    fn every_payload_the_code_can_build_is_one_the_schema_accepts() {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/conversation.event.v1.json")).unwrap();
        let rules = schema["allOf"].as_array().expect("the schema's per-type rules");
        for payload in every_payload() {
            let kind = payload.kind().as_str();
            let rule = rules.iter().find(|r| r["if"]["properties"]["type"]["const"] == kind).unwrap_or_else(|| panic!("no rule for {kind}"));
            let data_schema = &rule["then"]["properties"]["data"];
            let data = payload.to_value();
            assert!(jsonschema::is_valid(data_schema, &data), "{kind}: {data} is not what the schema allows");
        }
    }

    #[test]
    fn a_payload_never_says_it_includes_content() {
        for payload in every_payload() {
            assert_eq!(payload.to_value()["content_included"], false);
        }
    }
}
