//! The OpenAI facade's `tools`, `tool_choice`, `parallel_tool_calls` and
//! `response_format`: checked here (names, the tenant's allowed tools, a JSON
//! schema that compiles) and turned into the [`AnswerForm`] the model server
//! receives unchanged and the orchestrator governs by.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, Code};
use crate::slm::{AnswerForm, ResponseFormat};

/// At most this many tools per request (OpenAI's own limit).
const MAX_TOOLS: usize = 128;

/// A tool the model may call.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolDef {
    /// `function`
    #[serde(rename = "type")]
    kind: String,
    function: FunctionDef,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
struct FunctionDef {
    /// 1 to 64 letters, digits, `_` or `-`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// A JSON schema of the arguments (an object).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// `none`, `auto`, `required`, or one named function.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamedFunction {
    name: String,
}

/// `text`, `json_object`, or `json_schema` with its schema.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormatField {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaDef },
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JsonSchemaDef {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// The JSON schema the answer must follow (an object); a non-streamed
    /// answer is checked against it (`turn.format_checked`).
    #[schema(value_type = Object)]
    schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// What a request's form fields asked for.
pub struct FormFields {
    pub tools: Option<Vec<ToolDef>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormatField>,
}

fn invalid(param: &str, why: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidRequest, why).with_param(param)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FormFields {
    /// The answer's form, or the field that cannot be honoured. `allowed`: the
    /// only tool names the tenant may declare (`None`: any).
    pub fn check(self, allowed: Option<&[String]>) -> Result<AnswerForm, ApiError> {
        let tools = self.tools.unwrap_or_default();
        if tools.len() > MAX_TOOLS {
            return Err(invalid("tools", format!("at most {MAX_TOOLS} tools may be declared")));
        }
        let mut names: Vec<String> = Vec::with_capacity(tools.len());
        for tool in &tools {
            let name = &tool.function.name;
            if tool.kind != "function" {
                return Err(invalid("tools", "every tool must be of type `function`"));
            }
            if !valid_name(name) {
                return Err(invalid("tools", "a tool's name must be 1 to 64 letters, digits, `_` or `-`"));
            }
            if names.contains(name) {
                return Err(invalid("tools", format!("the tool `{name}` is declared twice")));
            }
            if tool.function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                return Err(invalid("tools", format!("the parameters of `{name}` must be a JSON schema object")));
            }
            if allowed.is_some_and(|allowed| !allowed.contains(name)) {
                return Err(ApiError::new(Code::ToolNotAllowed, format!("the tool `{name}` is not allowed for this tenant")).with_param("tools"));
            }
            names.push(name.clone());
        }
        match &self.tool_choice {
            None => {}
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "none" | "auto" => {}
                "required" if !names.is_empty() => {}
                "required" => return Err(invalid("tool_choice", "`required` needs tools")),
                _ => return Err(invalid("tool_choice", "tool_choice must be none, auto, required or a named function")),
            },
            Some(ToolChoice::Named { kind, function }) if kind != "function" || !names.contains(&function.name) => {
                return Err(invalid("tool_choice", "tool_choice names a function that is not among the tools"));
            }
            Some(ToolChoice::Named { .. }) => {}
        }
        let format = match &self.response_format {
            None | Some(ResponseFormatField::Text) => ResponseFormat::Text,
            Some(ResponseFormatField::JsonObject) => ResponseFormat::JsonObject,
            Some(ResponseFormatField::JsonSchema { json_schema }) => {
                if !valid_name(&json_schema.name) {
                    return Err(invalid("response_format", "json_schema.name must be 1 to 64 letters, digits, `_` or `-`"));
                }
                if !json_schema.schema.is_object() {
                    return Err(invalid("response_format", "json_schema.schema must be a JSON schema object"));
                }
                let validator = jsonschema::validator_for(&json_schema.schema).map_err(|e| {
                    invalid(
                        "response_format",
                        format!("json_schema.schema is not a valid JSON schema: {}", e.to_string().chars().take(200).collect::<String>()),
                    )
                })?;
                ResponseFormat::JsonSchema { name: json_schema.name.clone(), validator: Arc::new(validator) }
            }
        };
        let declared = !tools.is_empty();
        Ok(AnswerForm {
            tools: declared.then(|| serde_json::to_value(&tools).unwrap_or(Value::Null)),
            tool_names: names,
            tool_choice: self.tool_choice.map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
            parallel_tool_calls: self.parallel_tool_calls.filter(|_| declared),
            response_format: self.response_format.filter(|f| !matches!(f, ResponseFormatField::Text)).map(|f| serde_json::to_value(f).unwrap_or(Value::Null)),
            format,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(value: Value) -> FormFields {
        FormFields {
            tools: serde_json::from_value(value["tools"].clone()).unwrap(),
            tool_choice: serde_json::from_value(value["tool_choice"].clone()).unwrap(),
            parallel_tool_calls: serde_json::from_value(value["parallel_tool_calls"].clone()).unwrap(),
            response_format: serde_json::from_value(value["response_format"].clone()).unwrap(),
        }
    }

    fn weather() -> Value {
        json!([{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object" } } }])
    }

    fn refused(value: Value, allowed: Option<&[String]>) -> (String, String) {
        let err = fields(value).check(allowed).expect_err("refused");
        (err.code().name().to_owned(), err.param().unwrap_or_default().to_owned())
    }

    #[test]
    fn declared_tools_go_to_the_model_as_given_and_their_names_are_kept() {
        let form = fields(json!({ "tools": weather(), "tool_choice": "required", "parallel_tool_calls": false })).check(None).unwrap();
        assert_eq!(form.tools.as_ref().unwrap()[0]["function"]["name"], "get_weather");
        assert!(form.declares("get_weather") && !form.declares("rm"));
        assert_eq!(form.tool_choice, Some(json!("required")));
        assert_eq!(form.parallel_tool_calls, Some(false));
    }

    #[test]
    fn a_tool_outside_the_tenants_allowed_list_is_refused_naming_tools() {
        let allowed = vec!["search_docs".to_owned()];
        assert_eq!(refused(json!({ "tools": weather() }), Some(&allowed)), ("tool_not_allowed".into(), "tools".into()));
        assert!(fields(json!({ "tools": weather() })).check(Some(&["get_weather".to_owned()])).is_ok());
    }

    #[test]
    fn a_choice_of_an_undeclared_tool_or_a_schema_that_does_not_compile_is_refused_by_name() {
        let named = json!({ "type": "function", "function": { "name": "rm" } });
        assert_eq!(refused(json!({ "tools": weather(), "tool_choice": named }), None).1, "tool_choice");
        assert_eq!(refused(json!({ "tool_choice": "required" }), None).1, "tool_choice");
        let bad = json!({ "type": "json_schema", "json_schema": { "name": "p", "schema": { "type": 12 } } });
        assert_eq!(refused(json!({ "response_format": bad }), None).1, "response_format");
        let dup = json!([weather()[0], weather()[0]]);
        assert_eq!(refused(json!({ "tools": dup }), None).1, "tools");
    }

    #[test]
    fn a_json_schema_format_is_forwarded_and_ready_to_check_answers() {
        let format = json!({ "type": "json_schema", "json_schema": { "name": "person", "strict": true,
            "schema": { "type": "object", "properties": { "age": { "type": "integer" } }, "required": ["age"] } } });
        let form = fields(json!({ "response_format": format.clone() })).check(None).unwrap();
        assert_eq!(form.response_format, Some(format));
        assert!(form.format.check(r#"{"age":1}"#).unwrap().valid);
        assert!(fields(json!({ "response_format": { "type": "text" } })).check(None).unwrap().response_format.is_none());
    }
}
