//! The answer's form beyond text (OpenAI facade): the model's tool calls,
//! each judged as output before it may reach the app, and a JSON answer's
//! check against the format the request asked for.

use super::answer::{AnswerGuard, Judged};
use super::outcome::{Failure, TurnOutcome};
use super::recorder::Recorder;
use crate::error::Code;
use crate::events::TurnData;
use crate::slm::{AnswerForm, ToolCall};

/// Judges each call, in order, and records it (`turn.tool_call`: its name,
/// its arguments' digest, the verdict). `None`: every call may go to the app;
/// otherwise how the turn ends instead, and no call is passed on: one refused
/// on output (the turn is cut, `content_filter`), or one of a tool the request
/// did not declare (the model broke the request's terms: `model_error`).
pub async fn judge_tool_calls(calls: &[ToolCall], form: &AnswerForm, answer: &mut AnswerGuard, recorder: &Recorder) -> Option<TurnOutcome> {
    for call in calls {
        let (verdict, ends) = if !form.declares(&call.function.name) {
            let message = "the model called a tool the request did not declare".to_owned();
            ("undeclared".to_owned(), Some(TurnOutcome::Failed(Failure::Model { code: Code::ModelError, message, reason: "model_error" })))
        } else {
            match answer.judge_apart(&call.judged_text()).await {
                Judged::Goes { note } => {
                    if let Some(note) = note {
                        recorder.record(note).await;
                    }
                    ("allow".to_owned(), None)
                }
                Judged::Ends(outcome) => {
                    let verdict = match &outcome {
                        TurnOutcome::Refused(hit) => format!("refuse:{}", hit.code),
                        _ => "error".to_owned(),
                    };
                    (verdict, Some(outcome))
                }
            }
        };
        let data = TurnData::ToolCall {
            call_id: call.id.chars().take(64).collect(),
            name: call.function.name.chars().take(64).collect(),
            arguments_digest: call.arguments_digest(),
            arguments_chars: call.function.arguments.chars().count(),
            verdict,
        };
        recorder.record(data).await;
        if ends.is_some() {
            return ends;
        }
    }
    None
}

/// `turn.format_checked` for an answer asked to be JSON (`None` for text).
pub fn format_checked(form: &AnswerForm, answer: &str) -> Option<TurnData> {
    let check = form.format.check(answer)?;
    Some(TurnData::FormatChecked { format: check.format, schema: check.schema, valid: check.valid, error: check.error })
}

/// The log probabilities of the answer's tokens, held back with the text
/// they belong to: the output guard releases text later than the model sent
/// it, and entries go to the client with the text that holds their token.
#[derive(Debug, Default)]
pub struct HeldLogprobs {
    /// Each entry with its token's length in bytes, oldest first.
    held: std::collections::VecDeque<(usize, serde_json::Value)>,
    /// Bytes released and not yet matched by an entry.
    released: usize,
}

impl HeldLogprobs {
    pub fn push(&mut self, entries: Vec<serde_json::Value>) {
        self.held.extend(entries.into_iter().map(|entry| (entry["token"].as_str().map_or(0, str::len), entry)));
    }

    /// The entries whose tokens `bytes` more of released text completes.
    pub fn release(&mut self, bytes: usize) -> Vec<serde_json::Value> {
        self.released += bytes;
        let mut out = Vec::new();
        while let Some((len, _)) = self.held.front() {
            if *len > self.released {
                break;
            }
            self.released -= len;
            out.extend(self.held.pop_front().map(|(_, entry)| entry));
        }
        out
    }

    /// Every entry still held (the answer ended).
    pub fn rest(&mut self) -> Vec<serde_json::Value> {
        self.released = 0;
        self.held.drain(..).map(|(_, entry)| entry).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_follow_the_text_of_their_tokens_as_it_is_released() {
        let mut held = HeldLogprobs::default();
        held.push(vec![json!({ "token": "How" }), json!({ "token": " to" }), json!({ "token": " cook" })]);
        assert!(held.release(2).is_empty(), "\"Ho\" completes no token");
        assert_eq!(held.release(2), [json!({ "token": "How" })], "\"How \" completes \"How\" alone");
        assert_eq!(held.release(2), [json!({ "token": " to" })]);
        assert_eq!(held.rest(), [json!({ "token": " cook" })]);
    }
}
