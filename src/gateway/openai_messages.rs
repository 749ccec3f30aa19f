//! The OpenAI facade's `messages`: system, developer, user, assistant (with
//! the tool calls it made) and tool (a tool's result, answering one of those
//! calls) messages, turned into the turn's earlier messages and its last one.

use serde::Deserialize;

use crate::error::{ApiError, Code};
use crate::slm::{ChatMessage, Role, ToolCall};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct IncomingMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    role: String,
    content: Option<Content>,
    /// An assistant message's calls of tools, as an earlier answer gave them.
    tool_calls: Option<Vec<ToolCall>>,
    /// A tool message: the id of the call it answers.
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct Part {
    /// Only `text` parts are accepted.
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// The turn's messages: those before the last, the last one's text, and, when
/// the last is a tool's result, the call it answers.
pub struct Split {
    pub earlier: Vec<ChatMessage>,
    pub last: String,
    pub tool_call_id: Option<String>,
}

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidRequest, why).with_param("messages")
}

fn to_message(m: IncomingMessage) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => return Err(invalid(format!("unsupported message role `{}`", other.chars().take(32).collect::<String>()))),
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => return Err(invalid(format!("unsupported content part `{}`", kind.chars().take(32).collect::<String>()))),
                }
            }
            text
        }
    };
    if m.tool_calls.is_some() && role != Role::Assistant {
        return Err(invalid("only an assistant message may carry tool_calls"));
    }
    let tool_call_id = match (role, m.tool_call_id) {
        (Role::Tool, Some(id)) if !id.is_empty() && id.chars().count() <= 128 => Some(id),
        (Role::Tool, _) => return Err(invalid("a tool message must name the call it answers (tool_call_id, at most 128 characters)")),
        (_, _) => None,
    };
    let tool_calls = m.tool_calls.filter(|calls| !calls.is_empty());
    Ok(ChatMessage { role, content, tool_calls, tool_call_id })
}

/// Splits the request's messages into the earlier ones and the last, which
/// must be the user's or a tool's result. Each tool message must answer a call
/// an earlier assistant message made.
pub fn split_messages(messages: Vec<IncomingMessage>) -> Result<Split, ApiError> {
    let mut messages = messages.into_iter().map(to_message).collect::<Result<Vec<_>, _>>()?;
    let mut calls_made: Vec<&str> = Vec::new();
    for message in &messages {
        if let Some(id) = &message.tool_call_id {
            if !calls_made.contains(&id.as_str()) {
                return Err(invalid("a tool message answers a call no earlier assistant message made"));
            }
        }
        calls_made.extend(message.tool_calls.iter().flatten().map(|c| c.id.as_str()));
    }
    match messages.pop() {
        Some(last) if last.role == Role::User => Ok(Split { earlier: messages, last: last.content, tool_call_id: None }),
        Some(last) if last.role == Role::Tool => Ok(Split { earlier: messages, last: last.content, tool_call_id: last.tool_call_id }),
        _ => Err(ApiError::new(Code::InvalidRequest, "messages must end with a user message or a tool's result").with_param("messages")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn split(messages: serde_json::Value) -> Result<Split, ApiError> {
        split_messages(serde_json::from_value(messages).unwrap())
    }

    fn call(id: &str) -> serde_json::Value {
        json!({ "id": id, "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } })
    }

    #[test]
    fn a_tool_result_may_end_the_messages_answering_the_call_made_before_it() {
        let turn = split(json!([
            { "role": "user", "content": "Weather in Paris?" },
            { "role": "assistant", "content": null, "tool_calls": [call("c1")] },
            { "role": "tool", "tool_call_id": "c1", "content": "18 C, sunny" },
        ]))
        .unwrap();
        assert_eq!((turn.last.as_str(), turn.tool_call_id.as_deref()), ("18 C, sunny", Some("c1")));
        assert_eq!(turn.earlier[1].tool_calls.as_ref().unwrap()[0].function.name, "get_weather");
    }

    #[test]
    fn a_tool_result_answering_no_call_or_naming_none_is_refused() {
        let orphan = split(json!([{ "role": "user", "content": "hi" }, { "role": "tool", "tool_call_id": "c9", "content": "x" }]));
        assert_eq!(orphan.err().unwrap().param(), Some("messages"));
        let unnamed = split(json!([{ "role": "assistant", "tool_calls": [call("c1")] }, { "role": "tool", "content": "x" }]));
        assert!(unnamed.is_err());
        let ends_with_assistant = split(json!([{ "role": "user", "content": "hi" }, { "role": "assistant", "content": "hello" }]));
        assert!(ends_with_assistant.is_err());
    }
}
