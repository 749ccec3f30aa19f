//! Sessions and finished turns, over the shared database.

use futures_util::future::BoxFuture;
use sqlx::Row;

use super::turn::FinishReason;
use crate::db::{now_ms, Backend, Database};
use crate::events::TxWrite;
use crate::ids::{SessionId, TurnId};
use crate::slm::{ChatMessage, Role};

/// Whether a session id may be used by a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No such session yet: the first turn creates it.
    New,
    /// The session exists and belongs to the tenant.
    Owned,
    /// The session belongs to another tenant.
    Foreign,
}

/// What a turn refused on input is stored with instead of its text (unless
/// `chat.store_refused_text`): it may be the very content (PII, say) the
/// refusal is about.
pub const WITHHELD_TEXT: &str = "[withheld: refused by input moderation]";

/// One finished turn, as stored.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub turn_id: TurnId,
    pub session_id: SessionId,
    pub tenant: String,
    pub user_message: String,
    /// Caller-supplied earlier messages, as a JSON array of `{role, content}`.
    pub preamble: String,
    pub assistant_message: String,
    pub finish_reason: FinishReason,
    pub policy_verdict: String,
    pub constitution_hash: String,
    pub trace_id: String,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub created_at: i64,
    /// The category code the output guard cut the answer on (`None` when it was not cut).
    pub output_code: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConversationStore {
    db: Database,
}

impl ConversationStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn session_state(&self, tenant: &str, session_id: &SessionId) -> Result<SessionState, sqlx::Error> {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT tenant FROM sessions WHERE id = $1").bind(session_id.as_str()).fetch_optional(self.db.pool()).await?;
        Ok(match owner {
            None => SessionState::New,
            Some(owner) if owner == tenant => SessionState::Owned,
            Some(_) => SessionState::Foreign,
        })
    }

    /// The last `max_turns` answered turns of a session, oldest first, as
    /// user/assistant message pairs. Refused, failed and cancelled turns are not replayed.
    pub async fn history(&self, tenant: &str, session_id: &SessionId, max_turns: u32) -> Result<Vec<ChatMessage>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT user_message, assistant_message FROM turns \
             WHERE session_id = $1 AND tenant = $2 AND finish_reason IN ('stop', 'length') \
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(session_id.as_str())
        .bind(tenant)
        .bind(i64::from(max_turns))
        .fetch_all(self.db.pool())
        .await?;
        let mut messages = Vec::with_capacity(rows.len() * 2);
        for row in rows.iter().rev() {
            messages.push(ChatMessage::new(Role::User, row.try_get::<String, _>("user_message")?));
            messages.push(ChatMessage::new(Role::Assistant, row.try_get::<String, _>("assistant_message")?));
        }
        Ok(messages)
    }

    /// Stores a finished turn on its own (outside an outbox batch).
    pub async fn record(&self, turn: &TurnRecord) -> Result<(), sqlx::Error> {
        let mut tx = self.db.pool().begin().await?;
        RecordTurn::insert_all(&[&RecordTurn(turn.clone())], &mut tx, self.db.backend()).await?;
        tx.commit().await
    }

    /// Finished turns created at or after `since_ms`, of one tenant or all,
    /// newest first, at most `limit` (for the constitution dry run).
    pub async fn window(&self, tenant: Option<&str>, since_ms: i64, limit: i64) -> Result<Vec<TurnRecord>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {TURN_COLUMNS} FROM turns WHERE created_at >= $1 AND ($2 = '' OR tenant = $2) ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(since_ms)
        .bind(tenant.unwrap_or_default())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(record_of).collect()
    }

    /// Whether any turn of `tenant` was judged under the constitution `hash`
    /// (which makes that document one the tenant may read).
    pub async fn judged_under(&self, tenant: &str, hash: &str) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT 1 AS found FROM turns WHERE tenant = $1 AND constitution_hash = $2 LIMIT 1")
            .bind(tenant)
            .bind(hash)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Finished turns matching `filter`, newest first (for the console).
    pub async fn search(&self, filter: &TurnFilter) -> Result<Vec<TurnRecord>, sqlx::Error> {
        let sql = format!(
            "SELECT {TURN_COLUMNS} FROM turns WHERE ($1 = '' OR tenant = $1) AND ($2 = '' OR session_id = $2) AND ($3 = '' OR id = $3) \
             AND ($4 = '' OR trace_id = $4) AND created_at >= $5 \
             AND ($6 = '' OR ($6 = 'allow' AND policy_verdict = 'allow' AND finish_reason <> 'refused') \
                  OR ($6 = 'refuse' AND (policy_verdict <> 'allow' OR finish_reason = 'refused'))) \
             AND ($7 = '' OR (',' || replace(policy_verdict, 'refuse:', '') || ',') LIKE ('%,' || $7 || ',%') OR output_code = $7) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.tenant.as_deref().unwrap_or_default())
            .bind(filter.session.as_deref().unwrap_or_default())
            .bind(filter.turn.as_deref().unwrap_or_default())
            .bind(filter.trace.as_deref().unwrap_or_default())
            .bind(filter.since_ms)
            .bind(filter.verdict.map(Judged::as_str).unwrap_or_default())
            .bind(filter.code.as_deref().unwrap_or_default())
            .bind(filter.limit)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(record_of).collect()
    }

    /// Turns per minute since `since_ms` (of one tenant or all): (minute, turns, of them refused).
    pub async fn per_minute(&self, tenant: Option<&str>, since_ms: i64) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT created_at / 60000 AS minute, COUNT(*) AS turns, \
             SUM(CASE WHEN policy_verdict <> 'allow' OR finish_reason = 'refused' THEN 1 ELSE 0 END) AS refused \
             FROM turns WHERE created_at >= $1 AND ($2 = '' OR tenant = $2) GROUP BY created_at / 60000 ORDER BY minute",
        )
        .bind(since_ms)
        .bind(tenant.unwrap_or_default())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get("minute")?, r.try_get("turns")?, r.try_get("refused")?))).collect()
    }

    /// Refused turns since `since_ms`, counted by category code and stage
    /// (input: the codes of the refusing verdict; output: the code the answer was cut on).
    pub async fn refusals(&self, tenant: Option<&str>, since_ms: i64) -> Result<Vec<Refusals>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT policy_verdict, output_code, COUNT(*) AS n FROM turns \
             WHERE created_at >= $1 AND ($2 = '' OR tenant = $2) AND (policy_verdict <> 'allow' OR finish_reason = 'refused') \
             GROUP BY policy_verdict, output_code",
        )
        .bind(since_ms)
        .bind(tenant.unwrap_or_default())
        .fetch_all(self.db.pool())
        .await?;
        let mut counts: std::collections::BTreeMap<String, Refusals> = std::collections::BTreeMap::new();
        for row in &rows {
            let (verdict, output_code, n): (String, Option<String>, i64) = (row.try_get("policy_verdict")?, row.try_get("output_code")?, row.try_get("n")?);
            let (codes, on_output): (Vec<&str>, bool) = match verdict.strip_prefix("refuse:") {
                Some(codes) => (codes.split(',').collect(), false),
                // An answer cut before this column existed and without its event: its code is unknown.
                None => (vec![output_code.as_deref().unwrap_or("unknown")], true),
            };
            for code in codes {
                let entry = counts.entry(code.to_owned()).or_insert_with(|| Refusals { code: code.to_owned(), on_input: 0, on_output: 0 });
                *(if on_output { &mut entry.on_output } else { &mut entry.on_input }) += n;
            }
        }
        Ok(counts.into_values().collect())
    }

    /// The constitutions `tenant`'s turns were judged under.
    pub async fn constitutions_of(&self, tenant: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT constitution_hash FROM turns WHERE tenant = $1").bind(tenant).fetch_all(self.db.pool()).await
    }

    /// One finished turn by its id (for `steward audit replay`).
    pub async fn turn(&self, turn_id: &TurnId) -> Result<Option<TurnRecord>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {TURN_COLUMNS} FROM turns WHERE id = $1")).bind(turn_id.as_str()).fetch_optional(self.db.pool()).await?;
        row.as_ref().map(record_of).transpose()
    }

    /// All turns of a session, oldest first (for tests and audits).
    pub async fn turns(&self, session_id: &SessionId) -> Result<Vec<StoredTurn>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, finish_reason, assistant_message FROM turns WHERE session_id = $1 ORDER BY created_at, id")
            .bind(session_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredTurn {
                    id: parsed(r, "id", TurnId::parse)?,
                    finish_reason: parsed(r, "finish_reason", |s| FinishReason::parse(s).ok_or("not a finish reason"))?,
                    assistant_message: r.try_get("assistant_message")?,
                })
            })
            .collect()
    }
}

/// Refused turns of one category code, by the stage that refused them ([`ConversationStore::refusals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals {
    pub code: String,
    pub on_input: i64,
    pub on_output: i64,
}

/// Which finished turns [`ConversationStore::search`] returns; `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct TurnFilter {
    pub tenant: Option<String>,
    pub session: Option<String>,
    pub turn: Option<String>,
    pub trace: Option<String>,
    /// Allowed to the end, or refused (on input or output).
    pub verdict: Option<Judged>,
    /// A category code the turn was refused on (its input verdict's, or the one its answer was cut on).
    pub code: Option<String>,
    /// Created at or after this time (Unix ms).
    pub since_ms: i64,
    pub limit: i64,
}

/// How a turn was judged, for [`TurnFilter::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Allowed on input, and its answer never cut.
    Allowed,
    /// Refused on input, or its answer cut on output.
    Refused,
}

impl Judged {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allow",
            Self::Refused => "refuse",
        }
    }
}

/// A session's turn as stored: how it ended and the answer its client received.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTurn {
    pub id: TurnId,
    pub finish_reason: FinishReason,
    pub assistant_message: String,
}

/// A finished turn as a write of the outbox's transaction: the turn row and
/// its terminal event commit together. Creates the session on first use, never
/// attaches a turn to another tenant's session, and is idempotent.
#[derive(Debug)]
pub struct RecordTurn(pub TurnRecord);

/// Turn rows per statement (15 parameters each, far under either backend's limit).
const TURNS_PER_STATEMENT: usize = 50;

/// The columns of a turn's row as written, in the order `insert_all` binds them.
const TURN_INSERT_COLUMNS: &str = "id, session_id, tenant, user_message, assistant_message, finish_reason, policy_verdict, \
    constitution_hash, trace_id, prompt_tokens, completion_tokens, created_at, completed_at, preamble, output_code";

impl RecordTurn {
    /// Writes every turn of a batch (and its session, where new) with two
    /// statements per 50 turns. A turn is written only into a session of its
    /// own tenant; one already stored is left as it is (a retried batch).
    async fn insert_all(turns: &[&RecordTurn], conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
        // PostgreSQL text cannot hold NUL; a model may still emit one.
        let clean = |s: &str| s.replace('\0', "\u{fffd}");
        let now = now_ms();
        for chunk in turns.chunks(TURNS_PER_STATEMENT) {
            let sql = format!("INSERT INTO sessions (id, tenant, created_at) VALUES {} ON CONFLICT (id) DO NOTHING", backend.values(chunk.len(), 3));
            let mut sessions = sqlx::query(&sql);
            for RecordTurn(turn) in chunk {
                sessions = sessions.bind(turn.session_id.as_str()).bind(&turn.tenant).bind(turn.created_at);
            }
            sessions.execute(&mut *conn).await?;
            // The rows as a table `v`, its integers cast so PostgreSQL types them (SQLite accepts the casts as they are).
            let rows = backend.values(chunk.len(), 15);
            let sql = format!(
                "WITH v ({TURN_INSERT_COLUMNS}) AS (VALUES {rows}) \
                 INSERT INTO turns ({TURN_INSERT_COLUMNS}) \
                 SELECT id, session_id, tenant, user_message, assistant_message, finish_reason, policy_verdict, constitution_hash, trace_id, \
                 CAST(prompt_tokens AS BIGINT), CAST(completion_tokens AS BIGINT), CAST(created_at AS BIGINT), CAST(completed_at AS BIGINT), \
                 preamble, output_code FROM v \
                 WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.id = v.session_id AND s.tenant = v.tenant) \
                 ON CONFLICT (id) DO NOTHING"
            );
            let mut insert = sqlx::query(&sql);
            for RecordTurn(turn) in chunk {
                insert = insert
                    .bind(turn.turn_id.as_str())
                    .bind(turn.session_id.as_str())
                    .bind(&turn.tenant)
                    .bind(clean(&turn.user_message))
                    .bind(clean(&turn.assistant_message))
                    .bind(turn.finish_reason.as_str())
                    .bind(&turn.policy_verdict)
                    .bind(&turn.constitution_hash)
                    .bind(&turn.trace_id)
                    .bind(turn.prompt_tokens)
                    .bind(turn.completion_tokens)
                    .bind(turn.created_at)
                    .bind(now)
                    .bind(clean(&turn.preamble))
                    .bind(turn.output_code.as_deref());
            }
            insert.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

fn write_turns<'c>(writes: &'c [&'c dyn TxWrite], conn: &'c mut sqlx::AnyConnection, backend: Backend) -> BoxFuture<'c, Result<(), sqlx::Error>> {
    Box::pin(async move {
        // Only a `RecordTurn` names this batch writer; anything else is refused, not dropped.
        let turns = writes
            .iter()
            .map(|&w| (w as &dyn std::any::Any).downcast_ref::<RecordTurn>().ok_or_else(|| sqlx::Error::Protocol(format!("not a turn row: {w:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        RecordTurn::insert_all(&turns, conn, backend).await
    })
}

impl TxWrite for RecordTurn {
    fn write<'c>(&'c self, conn: &'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        let backend = Backend::of(conn);
        Box::pin(async move { RecordTurn::insert_all(&[self], conn, backend).await })
    }

    fn batched(&self) -> Option<(&'static str, crate::events::BatchWrite)> {
        Some(("turns", write_turns))
    }
}

/// The columns of a [`TurnRecord`], as [`record_of`] reads them.
const TURN_COLUMNS: &str = "id, session_id, tenant, user_message, preamble, assistant_message, finish_reason, policy_verdict, constitution_hash, \
    trace_id, prompt_tokens, completion_tokens, created_at, output_code";

fn record_of(r: &sqlx::any::AnyRow) -> Result<TurnRecord, sqlx::Error> {
    Ok(TurnRecord {
        turn_id: parsed(r, "id", TurnId::parse)?,
        session_id: parsed(r, "session_id", SessionId::parse)?,
        tenant: r.try_get("tenant")?,
        user_message: r.try_get("user_message")?,
        preamble: r.try_get("preamble")?,
        assistant_message: r.try_get("assistant_message")?,
        finish_reason: parsed(r, "finish_reason", |s| FinishReason::parse(s).ok_or("not a finish reason"))?,
        policy_verdict: r.try_get("policy_verdict")?,
        constitution_hash: r.try_get("constitution_hash")?,
        trace_id: r.try_get("trace_id")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        created_at: r.try_get("created_at")?,
        output_code: r.try_get("output_code")?,
    })
}

/// A text column read through its type's `parse`: a value the type refuses
/// is a decode error, never a value made up.
fn parsed<T, E: std::fmt::Display>(r: &sqlx::any::AnyRow, column: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<T, sqlx::Error> {
    let raw: String = r.try_get(column)?;
    parse(&raw).map_err(|err| sqlx::Error::Decode(format!("{column} {raw:?}: {err}").into()))
}
