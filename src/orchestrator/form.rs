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
