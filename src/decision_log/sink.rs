//! Where the decision log is kept: one trait, a PostgreSQL sink shared by
//! many hosts and an embedded SQLite sink for one machine, answering the
//! same analytics from the same SQL (`sql/`, rendered per dialect).

use super::event::DecisionEvent;
use crate::error::BackendError;
use async_trait::async_trait;

/// A span of time the analytics read, and the policy they are narrowed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// From (inclusive), seconds since the Unix epoch.
    pub since: i64,
    /// Until (exclusive), seconds since the Unix epoch.
    pub until: i64,
    /// Only this policy's decisions, when given.
    pub policy: Option<String>,
}

/// Decisions in a span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// All decisions.
    pub total: u64,
    /// Admitted.
    pub allowed: u64,
    /// Refused.
    pub blocked: u64,
}

impl Totals {
    /// `blocked / total` (0 when there were none).
    pub fn block_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.blocked as f64 / self.total as f64
        }
    }
}

/// One key's refusals in a span.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Offender {
    /// The key as logged.
    pub key: String,
    /// Refused decisions.
    pub blocked: u64,
    /// All decisions.
    pub total: u64,
}

impl Offender {
    /// `blocked / total` (0 when there were none).
    pub fn block_rate(&self) -> f64 {
        Totals {
            total: self.total,
            allowed: self.total - self.blocked.min(self.total),
            blocked: self.blocked,
        }
        .block_rate()
    }
}

/// One window's decisions in a span.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleHits {
    /// The policy.
    pub policy: String,
    /// The deciding window (`""`: none, e.g. exempt or denied by list).
    pub window: String,
    /// Decisions it decided.
    pub hits: u64,
    /// Of them, refusals.
    pub blocks: u64,
}

/// Decisions in one bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Point {
    /// The bucket's start, seconds since the Unix epoch.
    pub at: i64,
    /// Admitted.
    pub allowed: u64,
    /// Refused.
    pub blocked: u64,
}

/// One path's decisions for a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathHits {
    /// The path (`""` when the requests named none).
    pub path: String,
    /// Decisions.
    pub total: u64,
    /// Of them, refusals.
    pub blocked: u64,
}

/// What the raw events say of one key in a span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyEvents {
    /// The first and last decision, microseconds since the Unix epoch.
    pub first_last_us: Option<(i64, i64)>,
    /// Decisions by path, most first.
    pub by_path: Vec<PathHits>,
    /// The newest decisions, newest first.
    pub recent: Vec<DecisionEvent>,
}

/// What one cleanup deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cleaned {
    /// Raw events.
    pub events: u64,
    /// Per-minute rollup rows.
    pub rollups: u64,
}

/// One record of the audit trail, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredRecord {
    /// Its place in the trail, from 1.
    pub seq: i64,
    /// When, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Who or what did it (`cli`, `admin-api 10.0.0.5`, `policy`).
    pub actor: String,
    /// What was done (`ban`, `unban`, `list_add`, `list_remove`, `reload`).
    pub action: String,
    /// The policy (or `""`).
    pub policy: String,
    /// The key or entry acted on (or `""`).
    pub subject: String,
    /// More: a reason, a duration, a version.
    pub detail: String,
    /// The previous record's hash (64 hex digits; zeros for the first).
    pub prev: String,
    /// This record's hash over `prev` and its fields.
    pub hash: String,
}

/// A decision log's storage. Every method is bounded by the sink's
/// timeout and fails with a [`BackendError`] that names no secret.
#[async_trait]
pub trait LogSink: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;

    /// Writes `events` and adds them to the per-minute rollups, all or
    /// nothing; an event written before (same origin and seq) is skipped,
    /// in the rollups too. Answers how many were new.
    async fn write(&self, events: &[DecisionEvent]) -> Result<u64, BackendError>;

    /// Deletes events before `events_before_us` and rollups of minutes
    /// before `rollups_before` (seconds), `batch` rows per statement.
    async fn cleanup(
        &self,
        events_before_us: i64,
        rollups_before: i64,
        batch: u32,
    ) -> Result<Cleaned, BackendError>;

    /// Decisions in `span`, from the rollups.
    async fn totals(&self, span: &Span) -> Result<Totals, BackendError>;

    /// The keys refused most in `span` (ties: more decisions, then the key
    /// in byte order), at most `limit`, from the rollups.
    async fn top_offenders(&self, span: &Span, limit: u32) -> Result<Vec<Offender>, BackendError>;

    /// Decisions by policy and deciding window in `span`, from the rollups.
    async fn rule_hits(&self, span: &Span) -> Result<Vec<RuleHits>, BackendError>;

    /// Admitted and refused per `bucket` seconds in `span`, from the rollups.
    async fn series(&self, span: &Span, bucket: i64) -> Result<Vec<Point>, BackendError>;

    /// One key's decisions in `span`, from the rollups.
    async fn key_totals(&self, span: &Span, key: &str) -> Result<Totals, BackendError>;

    /// One key's raw events in `span`: first and last seen, by path (at
    /// most 20), the newest `recent`.
    async fn key_events(
        &self,
        span: &Span,
        key: &str,
        recent: u32,
    ) -> Result<KeyEvents, BackendError>;

    /// Appends one record to the audit trail, chained to the last one
    /// ([`audit_trail::chained`](super::audit_trail::chained)) under a lock
    /// that makes appends from many hosts one sequence.
    async fn append_audit(&self, draft: &StoredRecord) -> Result<StoredRecord, BackendError>;

    /// Audit records after `after_seq`, in order, at most `limit`.
    async fn audit_records(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, BackendError>;
}

/// Which table a delete statement of retention is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) enum Table {
    /// Raw events (`ratesync_decisions`).
    Events,
    /// Per-minute rollups (`ratesync_decision_minutes`).
    Rollups,
}

/// Retention as every sink runs it: `delete(table, before)` deletes up to
/// `batch` rows older than `before` and answers how many; it is called
/// until a statement deletes fewer, first for events, then for rollups.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) async fn delete_in_batches<F, Fut>(
    events_before_us: i64,
    rollups_before: i64,
    batch: u32,
    delete: F,
) -> Result<Cleaned, BackendError>
where
    F: Fn(Table, i64) -> Fut,
    Fut: std::future::Future<Output = Result<u64, BackendError>>,
{
    let mut cleaned = Cleaned::default();
    for (table, before) in [
        (Table::Events, events_before_us),
        (Table::Rollups, rollups_before),
    ] {
        loop {
            let n = delete(table, before).await?;
            match table {
                Table::Events => cleaned.events += n,
                Table::Rollups => cleaned.rollups += n,
            }
            if n < u64::from(batch) {
                break;
            }
        }
    }
    Ok(cleaned)
}

/// The SQL both sinks share (`sql/*.sql`), with the few differences of
/// dialect filled in: `{t}` the table prefix, `{rowid}` the row address,
/// `{binary}` byte-order collation, and `$N` parameters (`?N` in SQLite).
#[derive(Debug, Clone)]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) struct Dialect {
    pub(crate) table_prefix: String,
    pub(crate) rowid: &'static str,
    pub(crate) binary: &'static str,
    pub(crate) question_marks: bool,
}

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
impl Dialect {
    pub(crate) fn render(&self, sql: &str) -> String {
        let s = sql
            .replace("{t}", &self.table_prefix)
            .replace("{rowid}", self.rowid)
            .replace("{binary}", self.binary);
        if self.question_marks {
            let mut out = String::with_capacity(s.len());
            let mut chars = s.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            s
        }
    }
}

/// The shared statements, rendered for one dialect.
#[derive(Debug, Clone)]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) struct Queries {
    pub(crate) schema: Vec<String>,
    pub(crate) totals: String,
    pub(crate) top_offenders: String,
    pub(crate) rule_hits: String,
    pub(crate) series: String,
    pub(crate) key_totals: String,
    pub(crate) key_seen: String,
    pub(crate) key_paths: String,
    pub(crate) key_recent: String,
    pub(crate) delete_events: String,
    pub(crate) delete_rollups: String,
    pub(crate) audit_last: String,
    pub(crate) audit_insert: String,
    pub(crate) audit_read: String,
}

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
impl Queries {
    pub(crate) fn new(d: &Dialect) -> Self {
        Self {
            schema: d
                .render(include_str!("sql/schema.sql"))
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            totals: d.render(include_str!("sql/totals.sql")),
            top_offenders: d.render(include_str!("sql/top_offenders.sql")),
            rule_hits: d.render(include_str!("sql/rule_hits.sql")),
            series: d.render(include_str!("sql/series.sql")),
            key_totals: d.render(include_str!("sql/key_totals.sql")),
            key_seen: d.render(include_str!("sql/key_seen.sql")),
            key_paths: d.render(include_str!("sql/key_paths.sql")),
            key_recent: d.render(include_str!("sql/key_recent.sql")),
            delete_events: d.render(include_str!("sql/delete_events.sql")),
            delete_rollups: d.render(include_str!("sql/delete_rollups.sql")),
            audit_last: d.render(include_str!("sql/audit_last.sql")),
            audit_insert: d.render(include_str!("sql/audit_insert.sql")),
            audit_read: d.render(include_str!("sql/audit_read.sql")),
        }
    }
}
