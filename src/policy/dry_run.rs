//! What a candidate constitution would change, before it is activated: past
//! turns judged again under it, each compared with the verdict it got.
//! Read-only. Unless `chat.store_refused_text` is on, a turn refused on
//! input is stored without its text (it may be the very content the refusal
//! is about); such a turn cannot be judged again and is counted apart. An answer
//! cut on output is stored as far as it reached the client, without the text
//! that was cut, so such a turn is judged again on input only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::verdict::Verdict;
use crate::ids::TurnId;
use crate::moderation::{Decision, GuardStep, Hit, ModerationError, Moderator};
use crate::orchestrator::{FinishReason, TurnRecord, WITHHELD_TEXT};

/// A stored turn, as the dry run needs it.
#[derive(Debug, Clone)]
pub struct PastTurn {
    pub turn_id: TurnId,
    pub trace_id: String,
    /// `None` when the text was withheld (refused on input).
    pub user_message: Option<String>,
    /// The earlier messages the caller supplied with it (OpenAI facade),
    /// judged with it on input.
    pub earlier: Vec<String>,
    pub assistant_message: String,
    /// The input verdict it was signed with.
    pub verdict: Verdict,
    /// Whether the answer was cut by output moderation.
    pub output_refused: bool,
}

/// A stored turn whose verdict cannot be read: judging it again would
/// compare against a guess.
#[derive(Debug, thiserror::Error)]
#[error("turn {turn_id} has an unreadable stored verdict {stored:?}")]
pub struct UnreadableVerdict {
    pub turn_id: TurnId,
    pub stored: String,
}

impl TryFrom<TurnRecord> for PastTurn {
    type Error = UnreadableVerdict;

    /// A stored turn. One refused on input was stored without its text.
    fn try_from(turn: TurnRecord) -> Result<Self, UnreadableVerdict> {
        let Some(verdict) = Verdict::parse(&turn.policy_verdict) else {
            return Err(UnreadableVerdict { turn_id: turn.turn_id, stored: turn.policy_verdict });
        };
        let withheld = matches!(verdict, Verdict::Refuse(_)) && turn.user_message == WITHHELD_TEXT;
        let earlier: Vec<serde_json::Value> = serde_json::from_str(&turn.preamble).unwrap_or_default();
        Ok(Self {
            earlier: earlier.iter().filter_map(|m| m["content"].as_str().map(str::to_owned)).collect(),
            output_refused: matches!(verdict, Verdict::Allow) && turn.finish_reason == FinishReason::Refused,
            user_message: (!withheld).then_some(turn.user_message),
            assistant_message: turn.assistant_message,
            turn_id: turn.turn_id,
            trace_id: turn.trace_id,
            verdict,
        })
    }
}

/// How a turn's outcome would change: `allow`, `refuse:<codes>` for input,
/// `refuse_output[:<code>]` for an answer cut short.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Change {
    pub turn_id: TurnId,
    pub trace_id: String,
    pub from: String,
    pub to: String,
}

/// The report: counts by kind and category, and a sample of the changes.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct DryRunReport {
    pub turns: u64,
    pub judged: u64,
    /// Refused on input and stored without text: not judged again.
    pub withheld: u64,
    /// Of the judged turns, answers cut on output: judged again on input only
    /// (the text that was cut was never stored).
    pub output_cut: u64,
    /// Allowed before, refused under the candidate, by the candidate's category code.
    pub allow_to_refuse: BTreeMap<String, u64>,
    /// Refused before, allowed under the candidate, by the category code it had
    /// (`output` for an answer cut short, whose category the turn row does not keep).
    pub refuse_to_allow: BTreeMap<String, u64>,
    /// Refused both times under other categories.
    pub category_changed: u64,
    pub samples: Vec<Change>,
}

/// Changes listed in the report, at most.
const SAMPLES: usize = 20;

/// Judges `turns` under `candidate` (a moderator built from the candidate
/// document) and compares; `progress` is told how many turns are done.
/// Turns go in chunks: the semantic layer's model first runs over the whole
/// chunk in bulk ([`Moderator::prefetch`]), then the turns are judged as many
/// at a time as there are cores (on blocking threads), finding their texts in
/// the cache; the report keeps their order.
pub async fn dry_run(candidate: &Arc<Moderator>, turns: &[PastTurn], mut progress: impl FnMut(usize)) -> Result<DryRunReport, ModerationError> {
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut report = DryRunReport::default();
    for chunk in turns.chunks(CHUNK) {
        prefetch(candidate, chunk).await?;
        let mut judged = futures_util::stream::iter(chunk)
            .map(|turn| async move {
                match &turn.user_message {
                    None => Ok((turn, None)),
                    Some(user) => rejudge(candidate, turn, user).await.map(|after| (turn, Some(after))),
                }
            })
            .buffered(parallel);
        while let Some(next) = judged.next().await {
            let (turn, after) = next?;
            report.add(turn, after);
            progress(report.turns as usize);
        }
    }
    Ok(report)
}

/// Turns judged per bulk pass of the model: enough for many texts of each
/// token length (so each pass is large); [`Moderator::prefetch`] leaves any
/// texts past what the cache keeps to be judged one by one.
const CHUNK: usize = 2048;

/// [`Moderator::prefetch`] of the texts of `turns` that will be judged, on a blocking thread.
async fn prefetch(candidate: &Arc<Moderator>, turns: &[PastTurn]) -> Result<(), ModerationError> {
    let work: Vec<(Vec<String>, String)> = turns
        .iter()
        .filter_map(|t| {
            let user = t.user_message.as_ref()?;
            let answer = if t.output_refused { String::new() } else { t.assistant_message.clone() };
            Some((t.earlier.iter().cloned().chain([user.clone()]).collect(), answer))
        })
        .collect();
    let candidate = candidate.clone();
    let done = tokio::task::spawn_blocking(move || {
        let turns: Vec<(Vec<String>, &str)> = work.iter().map(|(messages, answer)| (messages.clone(), answer.as_str())).collect();
        candidate.prefetch(&turns)
    })
    .await;
    done.map_err(|e| ModerationError::Worker(e.to_string()))?.map(|_| ())
}

impl DryRunReport {
    /// Counts one turn: `after` is its outcome under the candidate (`None` if withheld).
    fn add(&mut self, turn: &PastTurn, after: Option<Outcome>) {
        self.turns += 1;
        let Some(after) = after else {
            self.withheld += 1;
            return;
        };
        self.judged += 1;
        self.output_cut += u64::from(turn.output_refused);
        let before = Outcome::of(turn);
        if let Some(kind) = before.compare(&after) {
            match kind {
                Kind::AllowToRefuse(code) => *self.allow_to_refuse.entry(code).or_default() += 1,
                Kind::RefuseToAllow(code) => *self.refuse_to_allow.entry(code).or_default() += 1,
                Kind::CategoryChanged => self.category_changed += 1,
            }
            if self.samples.len() < SAMPLES {
                self.samples.push(Change { turn_id: turn.turn_id.clone(), trace_id: turn.trace_id.clone(), from: before.label(), to: after.label() });
            }
        }
    }
}

/// A turn judged again: its recorded outcome, the one it gets now (labels as
/// in [`Change`]), and whether they agree.
#[derive(Debug, Serialize)]
pub struct Replayed {
    pub recorded: String,
    pub replayed: String,
    pub reproduced: bool,
}

/// One turn judged again under `moderator`; `None` when its text was withheld.
pub async fn replay(moderator: &Moderator, turn: &PastTurn) -> Result<Option<Replayed>, ModerationError> {
    let Some(user) = &turn.user_message else { return Ok(None) };
    let (before, after) = (Outcome::of(turn), rejudge(moderator, turn, user).await?);
    Ok(Some(Replayed { recorded: before.label(), replayed: after.label(), reproduced: before.compare(&after).is_none() }))
}

/// A window back from now: `90s`, `30m`, `24h`, `7d`.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    let too_long = || format!("`{s}`: the window can be at most {}d", MAX_WINDOW.as_secs() / 86_400);
    // Digits past u64 are a window too long, not a malformed one.
    let n: u64 = match number.parse() {
        Ok(n) => n,
        Err(_) if !number.is_empty() => return Err(too_long()),
        Err(_) => return Err(format!("`{s}`: expected a number and a unit, e.g. 24h")),
    };
    let window = n.checked_mul(seconds).map(Duration::from_secs).ok_or_else(too_long)?;
    if window > MAX_WINDOW {
        return Err(too_long());
    }
    Ok(window)
}

/// The longest window a dry run looks back over: ten years, far past any stored turn, and
/// small enough that `now - window` fits a millisecond timestamp.
pub const MAX_WINDOW: Duration = Duration::from_secs(3650 * 86_400);

/// A turn's outcome: allowed, refused on input (codes), or cut on output (code if known).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allow,
    Input(Vec<String>),
    Output(Option<String>),
}

enum Kind {
    AllowToRefuse(String),
    RefuseToAllow(String),
    CategoryChanged,
}

impl Outcome {
    fn of(turn: &PastTurn) -> Self {
        match &turn.verdict {
            Verdict::Refuse(codes) => Self::Input(codes.clone()),
            Verdict::Allow if turn.output_refused => Self::Output(None),
            Verdict::Allow => Self::Allow,
        }
    }

    fn first_code(&self) -> String {
        match self {
            Self::Allow => String::new(),
            Self::Input(codes) => codes.first().cloned().unwrap_or_default(),
            Self::Output(code) => code.clone().unwrap_or_else(|| "output".into()),
        }
    }

    fn compare(&self, after: &Self) -> Option<Kind> {
        match (self, after) {
            (Self::Allow, Self::Allow) => None,
            (Self::Allow, refused) => Some(Kind::AllowToRefuse(refused.first_code())),
            (refused, Self::Allow) => Some(Kind::RefuseToAllow(refused.first_code())),
            // An answer cut short keeps no category in the turn row: only the stage can differ.
            (Self::Output(None), Self::Output(_)) => None,
            (before, after) if before == after => None,
            _ => Some(Kind::CategoryChanged),
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Allow => "allow".into(),
            Self::Input(codes) => format!("refuse:{}", codes.join(",")),
            Self::Output(None) => "refuse_output".into(),
            Self::Output(Some(code)) => format!("refuse_output:{code}"),
        }
    }
}

/// The candidate's outcome for one turn: its input (with the earlier messages
/// the caller supplied), then, if allowed, its answer as streamed output,
/// through the phrase guard and the semantic layer. An answer that was cut is
/// taken as cut again: what was cut is not stored to judge.
async fn rejudge(candidate: &Moderator, turn: &PastTurn, user: &str) -> Result<Outcome, ModerationError> {
    let texts = turn.earlier.iter().cloned().chain([user.to_owned()]).collect();
    if let Decision::Refuse(hits) = candidate.judge_messages(texts).await? {
        return Ok(Outcome::Input(hits.into_iter().map(|h| h.code).collect()));
    }
    if turn.output_refused {
        return Ok(Outcome::Output(None));
    }
    judge_answer(candidate, &turn.assistant_message).await
}

async fn judge_answer(candidate: &Moderator, answer: &str) -> Result<Outcome, ModerationError> {
    let mut guard = candidate.output_guard();
    if let GuardStep::Refuse(hit) = guard.push(answer) {
        return Ok(Outcome::Output(Some(hit.code)));
    }
    let cut: Option<Hit> = match candidate.output_sentences() {
        Some(mut sentences) => {
            let mut pieces = sentences.push(answer);
            pieces.extend(sentences.finish());
            candidate.judge_output(pieces).await?
        }
        None => None,
    };
    Ok(cut.map_or(Outcome::Allow, |hit| Outcome::Output(Some(hit.code))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(codes: &[&str]) -> Outcome {
        Outcome::Input(codes.iter().map(|c| (*c).to_owned()).collect())
    }

    #[test]
    fn windows_read_seconds_minutes_hours_and_days() {
        assert_eq!(parse_window("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_window("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_window("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_window("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_window("7").is_err());
        assert!(parse_window("h").is_err());
        assert!(parse_window("3w").is_err());
    }

    #[test]
    fn a_window_past_the_maximum_is_an_error_naming_it_never_an_overflow() {
        assert_eq!(parse_window("3650d").unwrap(), MAX_WINDOW);
        for huge in ["3651d", "300000000000000d", "18446744073709551615s", "99999999999999999999999d"] {
            assert!(parse_window(huge).unwrap_err().contains("at most 3650d"), "{huge}");
        }
    }

    #[test]
    fn outcomes_compare_by_decision_then_category() {
        assert!(Outcome::Allow.compare(&Outcome::Allow).is_none());
        assert!(matches!(Outcome::Allow.compare(&input(&["S1"])), Some(Kind::AllowToRefuse(c)) if c == "S1"));
        assert!(matches!(input(&["pii"]).compare(&Outcome::Allow), Some(Kind::RefuseToAllow(c)) if c == "pii"));
        assert!(matches!(Outcome::Output(None).compare(&Outcome::Allow), Some(Kind::RefuseToAllow(c)) if c == "output"));
        assert!(matches!(input(&["S1"]).compare(&input(&["S2"])), Some(Kind::CategoryChanged)));
        assert!(input(&["S1"]).compare(&input(&["S1"])).is_none());
        assert!(Outcome::Output(None).compare(&Outcome::Output(Some("S9".into()))).is_none(), "the stored row keeps no output category");
        assert_eq!(input(&["S1", "pii"]).label(), "refuse:S1,pii");
        assert_eq!(Outcome::Output(Some("S9".into())).label(), "refuse_output:S9");
    }

    #[test]
    fn a_stored_turn_whose_verdict_cannot_be_read_is_an_error_not_an_allowed_turn() {
        let record = |verdict: &str| TurnRecord {
            turn_id: TurnId::parse("t1").unwrap(),
            session_id: crate::ids::SessionId::parse("s1").unwrap(),
            tenant: "acme".into(),
            user_message: "hello".into(),
            preamble: "[]".into(),
            assistant_message: "hi".into(),
            finish_reason: FinishReason::Stop,
            policy_verdict: verdict.into(),
            constitution_hash: String::new(),
            trace_id: "tr".into(),
            prompt_tokens: None,
            completion_tokens: None,
            created_at: 0,
            output_code: None,
        };
        let err = PastTurn::try_from(record("refuse:")).unwrap_err();
        assert_eq!((err.turn_id.as_str(), err.stored.as_str()), ("t1", "refuse:"));
        assert!(PastTurn::try_from(record("garbled")).is_err());
        assert_eq!(PastTurn::try_from(record("allow")).unwrap().verdict, Verdict::Allow);
    }
}
