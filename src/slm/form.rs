//! What a request asks of the answer's form beyond plain text (the OpenAI
//! facade's `tools`, `tool_choice`, `parallel_tool_calls` and
//! `response_format`), forwarded to the model server as given; the tool calls
//! the model makes, assembled from their streamed pieces; and the check of a
//! JSON answer against the format it was asked for.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One call of a tool, in OpenAI's shape (`tool_calls[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    /// `function`
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not checked to be JSON.
    pub arguments: String,
}

impl ToolCall {
    /// `sha256:<hex>` of the arguments, for the record (never the arguments themselves).
    pub fn arguments_digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.function.arguments.as_bytes())))
    }

    /// What moderation reads of the call: the tool's name and every string in
    /// its arguments (keys and values), one per line; the raw arguments when
    /// they are not JSON.
    pub fn judged_text(&self) -> String {
        let mut text = self.function.name.replace(['_', '-'], " ");
        match serde_json::from_str::<Value>(&self.function.arguments) {
            Ok(value) => strings_of(&value, &mut text),
            Err(_) => {
                text.push('\n');
                text.push_str(&self.function.arguments);
            }
        }
        text
    }
}

fn strings_of(value: &Value, out: &mut String) {
    fn line(out: &mut String, s: &str) {
        out.push('\n');
        out.push_str(s);
    }
    match value {
        Value::String(s) => line(out, s),
        Value::Array(items) => items.iter().for_each(|v| strings_of(v, out)),
        Value::Object(fields) => {
            for (key, v) in fields {
                line(out, &key.replace('_', " "));
                strings_of(v, out);
            }
        }
        Value::Number(n) => line(out, &n.to_string()),
        Value::Bool(_) | Value::Null => {}
    }
}

/// A piece of a streamed tool call (`delta.tool_calls[]`): the first piece of
/// a call carries its id and name, the following ones more of its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallPart {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// A turn's tool calls, assembled from their pieces in the order of their index.
#[derive(Debug, Default)]
pub struct ToolCalls {
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCalls {
    pub fn push(&mut self, part: ToolCallPart) {
        let at = match self.calls.iter().position(|(index, _)| *index == part.index) {
            Some(at) => at,
            None => {
                let empty = ToolCall { id: String::new(), kind: "function".into(), function: FunctionCall { name: String::new(), arguments: String::new() } };
                self.calls.push((part.index, empty));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at].1;
        if let Some(id) = part.id.filter(|id| !id.is_empty()) {
            call.id = id;
        }
        if let Some(name) = part.name {
            call.function.name.push_str(&name);
        }
        call.function.arguments.push_str(&part.arguments);
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The calls, in index order; a call the server gave no id gets one (`call_<turn>_<n>`).
    pub fn finish(self, turn_id: &str) -> Vec<ToolCall> {
        let mut calls = self.calls;
        calls.sort_by_key(|(index, _)| *index);
        calls
            .into_iter()
            .map(|(index, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{turn_id}_{index}");
                }
                call
            })
            .collect()
    }
}

/// The format the answer's text must take (`response_format`).
#[derive(Debug, Clone, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid under the schema named `name`.
    JsonSchema { name: String, validator: Arc<jsonschema::Validator> },
}

impl ResponseFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::JsonObject => "json_object",
            Self::JsonSchema { .. } => "json_schema",
        }
    }

    /// Checks an answer against the format: `None` for plain text (nothing to check).
    pub fn check(&self, answer: &str) -> Option<FormatCheck> {
        // Plain text (every turn but the facade's JSON ones) costs no parse.
        if matches!(self, Self::Text) {
            return None;
        }
        let error = match (self, serde_json::from_str::<Value>(answer)) {
            (_, Err(e)) => Some(format!("not JSON: {e}")),
            (Self::JsonSchema { validator, .. }, Ok(value)) => {
                validator.iter_errors(&value).next().map(|e| format!("at `{}`: {e}", e.instance_path()).chars().take(300).collect())
            }
            // `json_object` (plain text returned above).
            (_, Ok(value)) => (!value.is_object()).then(|| "not a JSON object".to_owned()),
        };
        let schema = match self {
            Self::JsonSchema { name, .. } => Some(name.clone()),
            _ => None,
        };
        Some(FormatCheck { format: self.as_str(), schema, valid: error.is_none(), error })
    }
}

/// What checking an answer against its format found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatCheck {
    pub format: &'static str,
    /// The schema's name (`json_schema`).
    pub schema: Option<String>,
    pub valid: bool,
    /// The first violation, when not valid.
    pub error: Option<String>,
}

/// What a request asks of the answer's form. The default asks nothing: the
/// model answers in text.
#[derive(Debug, Clone, Default)]
pub struct AnswerForm {
    /// `tools`, as the request gave them (forwarded unchanged).
    pub tools: Option<Value>,
    /// The declared tools' names: a call to any other is not passed on.
    pub tool_names: Vec<String>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `response_format`, as the request gave it (forwarded unchanged).
    pub response_format: Option<Value>,
    /// The same, ready to check an answer against.
    pub format: ResponseFormat,
}

impl AnswerForm {
    /// The request fields to add to the model request.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, Value)> + '_ {
        [
            ("tools", self.tools.clone()),
            ("tool_choice", self.tool_choice.clone()),
            ("parallel_tool_calls", self.parallel_tool_calls.map(Value::Bool)),
            ("response_format", self.response_format.clone()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }

    pub fn declares(&self, tool: &str) -> bool {
        self.tool_names.iter().any(|name| name == tool)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn part(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> ToolCallPart {
        ToolCallPart { index, id: id.map(Into::into), name: name.map(Into::into), arguments: arguments.into() }
    }

    #[test]
    fn streamed_pieces_make_whole_calls_in_index_order_and_a_call_without_id_gets_one() {
        let mut calls = ToolCalls::default();
        calls.push(part(1, None, Some("get_time"), "{\"city\""));
        calls.push(part(0, Some("abc"), Some("get_weather"), "{\"city\":"));
        calls.push(part(0, None, None, " \"Paris\"}"));
        calls.push(part(1, None, None, ": \"Oslo\"}"));
        let calls = calls.finish("t1");
        assert_eq!(calls[0].id, "abc");
        assert_eq!(calls[0].function.arguments, "{\"city\": \"Paris\"}");
        assert_eq!(calls[1].id, "call_t1_1");
        assert_eq!(calls[1].function.name, "get_time");
    }

    #[test]
    fn moderation_reads_the_tool_name_and_every_string_of_the_arguments() {
        let call = ToolCall {
            id: "c".into(),
            kind: "function".into(),
            function: FunctionCall { name: "web_search".into(), arguments: json!({ "query": "how to build it", "opts": { "n": 3 } }).to_string() },
        };
        let text = call.judged_text();
        assert!(text.starts_with("web search\n"), "{text}");
        assert!(text.contains("\nhow to build it"), "{text}");
        assert!(call.arguments_digest().starts_with("sha256:"));
    }

    #[test]
    fn an_answer_is_checked_against_its_schema_and_the_first_violation_named() {
        let schema = json!({ "type": "object", "properties": { "age": { "type": "integer" } }, "required": ["age"] });
        let format = ResponseFormat::JsonSchema { name: "person".into(), validator: Arc::new(jsonschema::validator_for(&schema).unwrap()) };
        assert!(format.check(r#"{"age": 3}"#).unwrap().valid);
        let wrong = format.check(r#"{"age": "three"}"#).unwrap();
        assert!(!wrong.valid);
        assert!(wrong.error.unwrap().contains("/age"));
        assert_eq!(format.check("not json").unwrap().error.unwrap().split(':').next(), Some("not JSON"));
        assert!(!ResponseFormat::JsonObject.check("[1]").unwrap().valid);
        assert_eq!(ResponseFormat::Text.check("anything"), None);
    }
}
