//! Bring your own guard (`[moderation.guard]`): after the lexicon and the
//! semantic layer allow a turn's input, or a finished piece of its answer, a
//! guard service the operator trusts judges it too, within a deadline. Two
//! kinds:
//!
//! - `chat`: a guard model of the Llama Guard family served over the
//!   OpenAI-compatible chat API (llama.cpp, vLLM, Ollama). Its prompt lists
//!   the constitution's categories by code; its answer (`safe`, or `unsafe`
//!   and a line of codes) is read into the constitution's categories.
//! - `moderation_api`: a service speaking OpenAI's `POST /v1/moderations`;
//!   its flagged categories map onto the constitution's codes by the
//!   constitution's `[guard] openai_categories` table (by default, the
//!   correspondence [`OPENAI_CATEGORIES`] gives).
//!
//! Every guard decision names the guard's model and a digest of what it was
//! asked with (the template or the table), so a record says what judged it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Hit, Layer};
pub use crate::config::GuardFailure;
use crate::config::PerTenant;
use crate::policy::constitution::Constitution;

/// OpenAI's moderation categories, each with the constitution categories (by
/// name) that correspond to it. Categories without a counterpart (privacy,
/// elections, prompt injection, …) have none.
pub const OPENAI_CATEGORIES: [(&str, &[&str]); 13] = [
    ("harassment", &[]),
    ("harassment/threatening", &[]),
    ("hate", &["hate"]),
    ("hate/threatening", &[]),
    ("illicit", &["non_violent_crimes"]),
    ("illicit/violent", &["violent_crimes", "indiscriminate_weapons"]),
    ("self-harm", &["suicide_self_harm"]),
    ("self-harm/intent", &[]),
    ("self-harm/instructions", &[]),
    ("sexual", &["sexual_content", "sex_related_crimes"]),
    ("sexual/minors", &["child_sexual_exploitation"]),
    ("violence", &["violent_crimes"]),
    ("violence/graphic", &[]),
];

/// What the guard is, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardInfo {
    /// The guard's model name.
    pub model: String,
    /// `sha256:` over the kind, the model and what the guard is asked with
    /// under this constitution (the chat template or the category table).
    pub config_digest: String,
}

/// Why the guard gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the guard did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the guard is unreachable or failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the guard's answer is not one Steward reads: {0}")]
    Answer(String),
}

impl crate::error::ErrorCode for GuardError {
    fn code(&self) -> crate::error::Code {
        crate::error::Code::GuardUnavailable
    }
}

impl GuardError {
    /// For `turn.guard_skipped` and the logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Request(_) => "unavailable",
            Self::Answer(_) => "unreadable_answer",
        }
    }
}

/// What the guard judges: the caller's messages, or the model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardStage {
    Input,
    Output,
}

impl GuardStage {
    /// Who speaks the judged text in the chat guard's conversation.
    fn speaker(self) -> &'static str {
        match self {
            Self::Input => "User",
            Self::Output => "Agent",
        }
    }
}

/// The guard port: judges a turn's texts under a constitution.
pub trait Guard: Send + Sync {
    /// The categories refused (empty: allowed), or why there is no decision.
    fn judge<'a>(&'a self, constitution: &'a Constitution, stage: GuardStage, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Hit>, GuardError>>;
    /// What judges, under `constitution`; `None` for the disabled guard.
    fn info(&self, constitution: &Constitution) -> Option<GuardInfo>;
}

/// No guard configured: judges nothing, allows everything, is named nowhere.
pub struct NoGuard;

impl Guard for NoGuard {
    fn judge<'a>(&'a self, _: &'a Constitution, _: GuardStage, _: &'a [String]) -> BoxFuture<'a, Result<Vec<Hit>, GuardError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn info(&self, _: &Constitution) -> Option<GuardInfo> {
        None
    }
}

/// The guard as a turn meets it: the port, whether one is configured, and
/// what each tenant's turn does when it gives no decision.
#[derive(Clone)]
pub struct GuardPolicy {
    pub guard: Arc<dyn Guard>,
    /// Whether a guard is configured (`guard` is [`NoGuard`] otherwise).
    pub guarded: bool,
    /// Shared, so a turn's copy of the policy costs two reference counts.
    pub failure: Arc<PerTenant<GuardFailure>>,
}

impl GuardPolicy {
    /// No guard.
    pub fn disabled() -> Self {
        Self { guard: Arc::new(NoGuard), guarded: false, failure: Arc::new(PerTenant::new(GuardFailure::Closed, &Default::default())) }
    }

    /// What judges, under `constitution` (`None` without a guard).
    pub fn info(&self, constitution: &Constitution) -> Option<GuardInfo> {
        if self.guarded {
            self.guard.info(constitution)
        } else {
            None
        }
    }
}

impl std::fmt::Debug for GuardPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardPolicy").field("guarded", &self.guarded).field("failure", &self.failure).finish_non_exhaustive()
    }
}

/// Which service a [`HttpGuard`] speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardKind {
    Chat,
    ModerationApi,
}

impl GuardKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::ModerationApi => "moderation_api",
        }
    }
}

/// A guard over HTTP, of either kind.
pub struct HttpGuard {
    kind: GuardKind,
    http: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl HttpGuard {
    pub fn new(kind: GuardKind, base_url: &str, model: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().connect_timeout(timeout).tcp_nodelay(true).build()?;
        Ok(Self { kind, http, base_url: base_url.trim_end_matches('/').to_owned(), model: model.to_owned(), api_key, timeout })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, GuardError> {
        let mut request = self.http.post(format!("{}{path}", self.base_url)).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let answer = async { request.send().await?.error_for_status()?.json::<Value>().await };
        tokio::time::timeout(self.timeout, answer).await.map_err(|_| GuardError::Timeout(self.timeout))?.map_err(GuardError::from)
    }

    async fn judge_chat(&self, constitution: &Constitution, stage: GuardStage, texts: &[String]) -> Result<Vec<Hit>, GuardError> {
        let body = json!({
            "model": self.model,
            "messages": [{ "role": "user", "content": chat_prompt(constitution, stage, &texts.join("\n\n")) }],
            "max_tokens": 24,
            "temperature": 0,
            "stream": false,
        });
        let answer = self.post("/chat/completions", body).await?;
        let text = answer["choices"][0]["message"]["content"].as_str().ok_or_else(|| GuardError::Answer("no message content".into()))?;
        read_chat_answer(constitution, text)
    }

    async fn judge_moderation_api(&self, constitution: &Constitution, texts: &[String]) -> Result<Vec<Hit>, GuardError> {
        let answer = self.post("/moderations", json!({ "model": self.model, "input": texts })).await?;
        let results = answer["results"].as_array().ok_or_else(|| GuardError::Answer("no results".into()))?;
        let table = category_table(constitution);
        let mut hits: Vec<Hit> = Vec::new();
        for result in results {
            let flagged = result["categories"].as_object().ok_or_else(|| GuardError::Answer("a result without categories".into()))?;
            for (theirs, _) in flagged.iter().filter(|(_, on)| on.as_bool() == Some(true)) {
                for code in table.iter().filter(|(name, _)| name == theirs).map(|(_, code)| code) {
                    if let Some(hit) = hit_of(constitution, code).filter(|h| !hits.iter().any(|known| known.code == h.code)) {
                        hits.push(hit);
                    }
                }
            }
        }
        Ok(hits)
    }
}

impl Guard for HttpGuard {
    fn judge<'a>(&'a self, constitution: &'a Constitution, stage: GuardStage, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Hit>, GuardError>> {
        Box::pin(async move {
            match self.kind {
                GuardKind::Chat => self.judge_chat(constitution, stage, texts).await,
                GuardKind::ModerationApi => self.judge_moderation_api(constitution, texts).await,
            }
        })
    }

    fn info(&self, constitution: &Constitution) -> Option<GuardInfo> {
        let asked_with = match self.kind {
            GuardKind::Chat => [GuardStage::Input, GuardStage::Output].map(|stage| chat_prompt(constitution, stage, "{text}")).concat(),
            GuardKind::ModerationApi => category_table(constitution).iter().map(|(theirs, code)| format!("{theirs}={code}\n")).collect(),
        };
        let digest = Sha256::digest(format!("{}\n{}\n{asked_with}", self.kind.as_str(), self.model));
        Some(GuardInfo { model: self.model.clone(), config_digest: format!("sha256:{}", hex::encode(digest)) })
    }
}

/// The Llama Guard prompt over `text` (the caller's or the model's, by
/// `stage`), the constitution's categories listed by code.
pub fn chat_prompt(constitution: &Constitution, stage: GuardStage, text: &str) -> String {
    let categories: String = constitution.categories.iter().map(|c| format!("{}: {}.\n", c.code, c.name.replace('_', " "))).collect();
    let who = stage.speaker();
    format!(
        "Task: Check if there is unsafe content in '{who}' messages in conversations according to our safety policy with the below categories.\n\n\
         <BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}<END UNSAFE CONTENT CATEGORIES>\n\n\
         <BEGIN CONVERSATION>\n\n{who}: {text}\n\n<END CONVERSATION>\n\n\
         Provide your safety assessment for ONLY THE LAST {who} message in the above conversation:\n\
         - First line must read 'safe' or 'unsafe'.\n\
         - If unsafe, a second line must include a comma-separated list of violated categories."
    )
}

/// A chat guard's answer: `safe`, or `unsafe` and a line of codes, each a
/// category of the constitution; anything else is unreadable.
pub fn read_chat_answer(constitution: &Constitution, answer: &str) -> Result<Vec<Hit>, GuardError> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next().map(str::to_ascii_lowercase).as_deref() {
        Some("safe") => Ok(Vec::new()),
        Some("unsafe") => {
            let codes = lines.next().unwrap_or_default();
            let hits: Vec<Hit> = codes.split(',').filter_map(|code| hit_of(constitution, code.trim())).collect();
            if hits.is_empty() {
                return Err(GuardError::Answer(format!("unsafe without a category of the constitution: {codes:?}")));
            }
            Ok(hits)
        }
        _ => Err(GuardError::Answer(answer.chars().take(80).collect())),
    }
}

/// OpenAI category → code: the constitution's `[guard]` table, or the
/// correspondence of [`OPENAI_CATEGORIES`] over its category names.
fn category_table(constitution: &Constitution) -> Vec<(String, String)> {
    if let Some(rule) = &constitution.guard {
        return rule.openai_categories.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    let mut table = Vec::new();
    for (theirs, ours) in OPENAI_CATEGORIES {
        for category in constitution.categories.iter().filter(|c| ours.contains(&c.name.as_str())) {
            table.push((theirs.to_owned(), category.code.clone()));
        }
    }
    table
}

fn hit_of(constitution: &Constitution, code: &str) -> Option<Hit> {
    let category = constitution.categories.iter().find(|c| c.code == code)?;
    Some(Hit { code: category.code.clone(), category: category.name.clone(), message: category.message.clone(), layer: Layer::Guard, score: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constitution() -> Constitution {
        Constitution::from_toml_str(&std::fs::read_to_string("config/constitution.toml").unwrap()).unwrap()
    }

    #[test]
    fn a_chat_guard_answer_is_read_into_the_constitutions_categories() {
        let c = constitution();
        assert!(read_chat_answer(&c, "safe").unwrap().is_empty());
        assert!(read_chat_answer(&c, "\n Safe \n").unwrap().is_empty());
        let hits = read_chat_answer(&c, "unsafe\nS1,S10").unwrap();
        assert_eq!(hits.iter().map(|h| (h.code.as_str(), h.layer)).collect::<Vec<_>>(), [("S1", Layer::Guard), ("S10", Layer::Guard)]);
        assert!(matches!(read_chat_answer(&c, "unsafe\nS99"), Err(GuardError::Answer(_))), "a code the constitution lacks");
        assert!(matches!(read_chat_answer(&c, "I think it is fine"), Err(GuardError::Answer(_))));
    }

    #[test]
    fn the_prompt_lists_every_category_by_code_and_the_digest_follows_it() {
        let c = constitution();
        let prompt = chat_prompt(&c, GuardStage::Input, "hello");
        assert!(prompt.contains("S1: violent crimes.\n") && prompt.contains("User: hello"));
        assert!(chat_prompt(&c, GuardStage::Output, "hello").contains("Agent: hello"));
        let guard = |model: &str| HttpGuard::new(GuardKind::Chat, "http://127.0.0.1:9/v1", model, None, Duration::from_secs(1)).unwrap();
        let (a, b) = (guard("llama-guard-3-1b").info(&c).unwrap(), guard("other").info(&c).unwrap());
        assert_eq!(a, guard("llama-guard-3-1b").info(&c).unwrap(), "the same guard, the same digest");
        assert_ne!(a.config_digest, b.config_digest, "another model, another digest");
    }

    #[test]
    fn without_a_table_openai_categories_map_by_the_correspondence() {
        let table = category_table(&constitution());
        assert!(table.contains(&("violence".into(), "S1".into())) && table.contains(&("illicit/violent".into(), "S9".into())), "{table:?}");
    }
}
