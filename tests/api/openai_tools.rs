//! The OpenAI facade's tools, structured output, stop sequences and log
//! probabilities, through three real clients (the official OpenAI SDK,
//! LangChain's ChatOpenAI, the LiteLLM SDK) and raw HTTP, against the real
//! model server: calls round-trip, harmful calls are cut before the app sees
//! them, an injection inside a tool's result is refused, and the record
//! says what the model asked the app to do.

use serde_json::{json, Value};

use crate::helpers::{assert_openai_error, read_sse, spawn_app, spawn_app_with, unique, Storage};

/// What `tests/openai_tools_check.py` printed, run with the clients' Python
/// (`STEWARD_TEST_CLIENTS_PYTHON`, by default `.venv-clients`: openai, langchain-openai, litellm).
async fn with_clients(app: &crate::helpers::TestApp, key: &str) -> Value {
    crate::openai::with_python_client("STEWARD_TEST_CLIENTS_PYTHON", ".venv-clients", "openai_tools_check.py", app, key).await
}

fn person(content: &Value) -> Value {
    let person: Value = serde_json::from_str(content.as_str().expect("an answer")).expect("the answer is JSON");
    assert!(person["name"].is_string() && person["age"].is_i64(), "{person}");
    person
}

fn called_weather(calls: &Value) {
    let call = &calls[0];
    assert_eq!(call["name"], "get_weather", "{calls}");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{calls}");
}

fn stopped_before_the_comma(seen: &Value) {
    let content = seen["content"].as_str().unwrap_or_default();
    assert!(!content.is_empty() && !content.contains(','), "the answer ends before the stop sequence: {seen}");
    assert_eq!(seen["finish_reason"], "stop", "{seen}");
}

#[tokio::test]
async fn the_openai_sdk_langchain_and_litellm_call_tools_get_checked_json_and_stop_and_harmful_calls_never_reach_them() {
    let app = spawn_app().await;
    let (tenant, key) = app.chat_key().await;

    let seen = with_clients(&app, &key).await;

    let sdk = &seen["openai"];
    assert_eq!(sdk["call"]["finish_reason"], "tool_calls", "{sdk}");
    assert!(sdk["call"]["content"].is_null());
    called_weather(&sdk["call"]["tool_calls"]);
    assert_eq!(sdk["answer"]["finish_reason"], "stop", "the tool's result comes back as an answer: {sdk}");
    assert!(!sdk["answer"]["content"].as_str().unwrap().is_empty());
    assert_eq!(sdk["streamed_call"]["finish_reason"], "tool_calls");
    called_weather(&sdk["streamed_call"]["tool_calls"]);
    assert_eq!(sdk["harmful_call"]["finish_reason"], "content_filter", "{sdk}");
    assert_eq!(sdk["harmful_call"]["tool_calls"], json!([]), "the harmful call never reached the app");
    assert!(!sdk["harmful_call"]["refusal"].as_str().unwrap().is_empty());
    assert_eq!(sdk["injected_result"]["finish_reason"], "content_filter", "{sdk}");
    assert!(sdk["injected_result"]["content"].is_null());
    assert_eq!(sdk["structured"]["finish_reason"], "stop");
    person(&sdk["structured"]["content"]);
    stopped_before_the_comma(&sdk["stopped"]);
    assert_eq!(sdk["undeclared_choice"], json!({ "status": 400, "code": "invalid_request", "param": "tool_choice" }));

    let langchain = &seen["langchain"];
    assert_eq!(langchain["call"]["tool_calls"][0]["name"], "get_weather", "{langchain}");
    assert!(langchain["call"]["tool_calls"][0]["args"]["city"].is_string());
    assert!(!langchain["answer"]["content"].as_str().unwrap().is_empty(), "{langchain}");
    assert_eq!(langchain["answer"]["tool_calls"], 0);
    assert!(langchain["structured"]["name"].is_string() && langchain["structured"]["age"].is_i64(), "{langchain}");
    stopped_before_the_comma(&langchain["stopped"]);

    let litellm = &seen["litellm"];
    assert_eq!(litellm["call"]["finish_reason"], "tool_calls", "{litellm}");
    called_weather(&litellm["call"]["tool_calls"]);
    person(&litellm["structured"]["content"]);
    stopped_before_the_comma(&litellm["stopped"]);

    // The record: every call the model made, allowed or cut, by name and digest; each JSON answer checked.
    let events: Vec<Value> = app.outbox("conversation.events").await.into_iter().filter(|e| e["tenant"] == tenant.as_str()).collect();
    let calls: Vec<&Value> = events.iter().filter(|e| e["type"] == "turn.tool_call").map(|e| &e["data"]).collect();
    let allowed = calls.iter().filter(|c| c["name"] == "get_weather" && c["verdict"] == "allow").count();
    assert_eq!(allowed, 4, "the SDK's two calls, LangChain's and LiteLLM's: {calls:?}");
    let cut = calls.iter().find(|c| c["name"] == "web_search").expect("the harmful call is on record");
    assert!(cut["verdict"].as_str().unwrap().starts_with("refuse:"), "{cut}");
    assert!(cut["arguments_digest"].as_str().unwrap().starts_with("sha256:") && cut.get("arguments").is_none());
    let cut_turn = events.iter().find(|e| e["type"] == "turn.tool_call" && e["data"]["name"] == "web_search").unwrap()["turn_id"].clone();
    let refused = events.iter().find(|e| e["turn_id"] == cut_turn && e["type"] == "turn.refused").expect("the cut turn is refused on output");
    assert_eq!(refused["data"]["stage"], "output");
    let completed_with_calls = events.iter().filter(|e| e["type"] == "turn.completed" && e["data"]["finish_reason"] == "tool_calls").count();
    assert_eq!(completed_with_calls, 4);
    let checked: Vec<&Value> = events.iter().filter(|e| e["type"] == "turn.format_checked").map(|e| &e["data"]).collect();
    assert_eq!(checked.len(), 3, "the SDK's, LangChain's and LiteLLM's structured answers: {checked:?}");
    assert!(checked.iter().all(|c| c["format"] == "json_schema" && c["valid"] == true), "{checked:?}");
}

#[tokio::test]
async fn a_tool_outside_the_tenants_allowed_list_is_refused_by_name_and_a_listed_one_goes_through() {
    let limited = unique("tenant-");
    let app = spawn_app_with(Storage::Sqlite, |s| {
        s.openai.allowed_tools = [(limited.clone(), vec!["get_weather".to_owned()])].into();
    })
    .await;
    let key = app.key(&limited, &[steward::identity::Capability::Chat]).await;
    let tool = |name: &str| json!({ "type": "function", "function": { "name": name, "parameters": { "type": "object", "properties": {} } } });
    let ask = |tools: Value| json!({ "messages": [{ "role": "user", "content": "What is the weather in Paris?" }], "tools": tools, "max_tokens": 40 });

    let refused = assert_openai_error(app.post("/v1/chat/completions", Some(&key), &ask(json!([tool("send_email")]))).await, 403, "tool_not_allowed").await;
    assert_eq!(refused["param"], "tools");
    let answered = app.post("/v1/chat/completions", Some(&key), &ask(json!([tool("get_weather")]))).await;
    assert_eq!(answered.status(), 200);
}

#[tokio::test]
async fn a_json_answer_that_breaks_its_schema_is_said_so_in_the_record() {
    let app = spawn_app().await;
    let (tenant, key) = app.chat_key().await;
    // The model server holds the answer to the schema: the check finds it valid.
    let body = json!({
        "messages": [{ "role": "user", "content": "Describe a fictional book character as JSON with a name and an age." }],
        "temperature": 0, "max_tokens": 60,
        "response_format": { "type": "json_schema", "json_schema": { "name": "strict_person", "schema": {
            "type": "object", "properties": { "name": { "type": "string" }, "age": { "type": "integer" } }, "required": ["name", "age"] } } },
    });
    let json: Value = app.post("/v1/chat/completions", Some(&key), &body).await.json().await.unwrap();
    assert_eq!(json["choices"][0]["finish_reason"], "stop", "{json}");
    let checked: Vec<Value> =
        app.outbox("conversation.events").await.into_iter().filter(|e| e["tenant"] == tenant.as_str() && e["type"] == "turn.format_checked").collect();
    assert_eq!(checked[0]["data"], json!({ "format": "json_schema", "schema": "strict_person", "valid": true, "content_included": false }));

    // An answer cut at max_tokens before its JSON closed: the check says why.
    let short = json!({ "messages": body["messages"], "max_tokens": 3, "temperature": 0, "response_format": body["response_format"] });
    let json: Value = app.post("/v1/chat/completions", Some(&key), &short).await.json().await.unwrap();
    assert_eq!(json["choices"][0]["finish_reason"], "length", "{json}");
    let checked: Vec<Value> =
        app.outbox("conversation.events").await.into_iter().filter(|e| e["tenant"] == tenant.as_str() && e["type"] == "turn.format_checked").collect();
    assert_eq!(checked.len(), 2);
    assert_eq!(checked[1]["data"]["valid"], false);
    assert!(checked[1]["data"]["error"].as_str().unwrap().starts_with("not JSON"), "{}", checked[1]);
}

#[tokio::test]
async fn log_probabilities_come_with_the_text_of_their_tokens_streamed_or_not() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let body = json!({ "messages": [{ "role": "user", "content": "Say hello." }], "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 2 });

    let whole: Value = app.post("/v1/chat/completions", Some(&key), &body).await.json().await.unwrap();
    let choice = &whole["choices"][0];
    let entries = choice["logprobs"]["content"].as_array().expect("logprobs.content");
    let tokens: String = entries.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert!(tokens.starts_with(choice["message"]["content"].as_str().unwrap()), "{whole}");
    assert!(entries.iter().all(|e| e["logprob"].as_f64().unwrap() <= 0.0 && e["top_logprobs"].as_array().unwrap().len() <= 2), "{whole}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let sse = read_sse(app.post("/v1/chat/completions", Some(&key), &streamed).await).await;
    let (mut text, mut tokens) = (String::new(), String::new());
    for (_, data) in &sse.events {
        let choice = &data["choices"][0];
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        tokens.extend(choice["logprobs"]["content"].as_array().into_iter().flatten().map(|e| e["token"].as_str().unwrap().to_owned()));
        // An entry comes with the text that completes its token, never ahead of it.
        assert!(text.starts_with(&tokens), "{tokens:?} ran ahead of {text:?}");
    }
    assert_eq!(text, choice["message"]["content"].as_str().unwrap(), "temperature 0 writes the same answer");
    assert!(tokens.starts_with(&text), "every token's entry was sent: {tokens:?} / {text:?}");

    let plain: Value = app.post("/v1/chat/completions", Some(&key), &json!({ "messages": body["messages"], "max_tokens": 2 })).await.json().await.unwrap();
    assert!(plain["choices"][0]["logprobs"].is_null(), "{plain}");
}

#[tokio::test]
async fn a_replayed_tool_call_whose_arguments_are_over_the_message_limit_is_refused_like_a_message() {
    let app = spawn_app().await;
    let (_, key) = app.chat_key().await;
    let arguments = json!({ "city": "x".repeat(9_000) }).to_string();
    let body = json!({ "messages": [
        { "role": "user", "content": "What is the weather in Paris?" },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "c1", "type": "function", "function": { "name": "get_weather", "arguments": arguments } }] },
        { "role": "tool", "tool_call_id": "c1", "content": "18 degrees and sunny" },
    ] });
    assert_openai_error(app.post("/v1/chat/completions", Some(&key), &body).await, 400, "message_too_long").await;
}
