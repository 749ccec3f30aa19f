//! What the OpenAI facade does with each field of a chat completion request:
//! honours it, accepts it at the value that asks nothing (`n: 1`,
//! `tools: []`, …), or refuses it by name with 400 `unsupported_parameter`.
//! Nothing a request asks for is silently dropped. A field no version of
//! OpenAI's API is known here to have is refused too, unless the tenant is
//! lenient (`openai.lenient`): then it is ignored, logged and counted.

use serde_json::{Map, Value};

use crate::error::{ApiError, Code};

/// Fields the facade honours (see `CompletionBody`).
const HONOURED: [&str; 20] = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "seed",
    "stream_options",
    "user",
    "n",
    "stop",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
];

/// Whether a field's value asks for nothing (the API's default).
type AsksNothing = fn(&Value) -> bool;

/// OpenAI's fields that Steward does not honour yet, each with the test for
/// the value that asks for nothing (accepted), or `None` when any value asks for something.
const NOT_YET: [(&str, Option<AsksNothing>); 10] = [
    ("logit_bias", Some(|v| v.as_object().is_some_and(Map::is_empty))),
    ("functions", Some(|v| v.as_array().is_some_and(Vec::is_empty))),
    ("function_call", Some(|v| v.as_str() == Some("none"))),
    ("audio", None),
    ("modalities", Some(|v| v.as_array().is_some_and(|m| m.iter().all(|x| x.as_str() == Some("text"))))),
    ("prediction", None),
    ("reasoning_effort", None),
    ("web_search_options", None),
    ("service_tier", Some(|v| matches!(v.as_str(), Some("auto" | "default")))),
    ("store", Some(|v| v == &Value::Bool(false))),
];

/// What screening a request found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// Unknown fields a lenient tenant's request carried, ignored.
    pub ignored: Vec<String>,
}

/// Screens `body`'s fields: `Ok` lists what a lenient tenant's request had
/// ignored; `Err` names the first field Steward cannot honour. A field set
/// to `null` asks for nothing.
pub fn screen(body: &Map<String, Value>, lenient: bool) -> Result<Screened, ApiError> {
    let mut screened = Screened::default();
    for (name, value) in body {
        if value.is_null() || HONOURED.contains(&name.as_str()) {
            continue;
        }
        match NOT_YET.iter().find(|(known, _)| known == name) {
            Some((_, Some(asks_nothing))) if asks_nothing(value) => {}
            Some(_) => return Err(unsupported(name, "is not supported by this gateway yet")),
            None if lenient => screened.ignored.push(name.clone()),
            None => return Err(unsupported(name, "is not a parameter this gateway knows")),
        }
    }
    if let Some(n) = body.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return Err(unsupported("n", "must be 1: one choice per request"));
        }
    }
    Ok(screened)
}

fn unsupported(param: &str, why: &str) -> ApiError {
    // The name comes from the client: only a bounded, printable prefix of it is echoed.
    let shown: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
    ApiError::new(Code::UnsupportedParameter, format!("`{shown}` {why}")).with_param(shown)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        let mut base = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] });
        base.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        base.as_object().unwrap().clone()
    }

    fn refused(value: Value, lenient: bool) -> Option<String> {
        screen(&body(value), lenient).err().map(|e| e.param().unwrap_or_default().to_owned())
    }

    #[test]
    fn a_parameter_asking_for_something_not_honoured_is_refused_by_name_even_when_lenient() {
        for (field, value) in [("functions", json!([{ "name": "f" }])), ("prediction", json!({ "type": "content", "content": "x" })), ("n", json!(2))] {
            assert_eq!(refused(json!({ field: value }), true).as_deref(), Some(field), "{field}");
        }
    }

    #[test]
    fn defaults_and_nulls_ask_for_nothing_and_pass() {
        let asks_nothing = json!({
            "n": 1, "logit_bias": {}, "functions": [], "function_call": "none",
            "store": false, "audio": null,
        });
        assert_eq!(screen(&body(asks_nothing), false).unwrap(), Screened::default());
    }

    #[test]
    fn an_unknown_field_is_refused_unless_the_tenant_is_lenient_and_then_it_is_listed() {
        assert_eq!(refused(json!({ "temprature": 0.2 }), false).as_deref(), Some("temprature"));
        assert_eq!(screen(&body(json!({ "temprature": 0.2 })), true).unwrap().ignored, ["temprature"]);
    }
}
