//! The embedded sink: one SQLite file (WAL, so readers never wait for the
//! writer), for a single machine. Several processes on that machine may
//! share the file; SQLite serialises their writes (`busy_timeout`).

use super::audit_trail;
use super::event::DecisionEvent;
use super::sink::{
    delete_in_batches, Cleaned, Dialect, KeyEvents, LogSink, Offender, PathHits, Point, Queries,
    RuleHits, Span, StoredRecord, Table, Totals,
};
use crate::error::BackendError;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KIND: &str = "sqlite";

/// The decision log in a SQLite file.
pub struct SqliteSink {
    conn: Arc<Mutex<Connection>>,
    sql: Arc<Statements>,
    path: PathBuf,
}

struct Statements {
    shared: Queries,
    insert: String,
    rollup: String,
}

impl std::fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSink")
            .field("path", &self.path)
            .finish()
    }
}

fn fail(e: impl std::fmt::Display) -> BackendError {
    BackendError::new(KIND, e.to_string())
}

impl SqliteSink {
    /// Opens (creating when missing) the log at `path` and its tables.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BackendError> {
        let path = path.as_ref().to_path_buf();
        let at = |e: rusqlite::Error| fail(format!("{}: {e}", path.display()));
        let conn = Connection::open(&path).map_err(at)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(at)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(at)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(at)?;
        let dialect = Dialect {
            table_prefix: String::new(),
            rowid: "rowid",
            binary: "COLLATE BINARY",
            question_marks: true,
        };
        let shared = Queries::new(&dialect);
        for stmt in &shared.schema {
            conn.execute(stmt, []).map_err(at)?;
        }
        let sql = Statements {
            insert: dialect.render(include_str!("sql/sqlite_insert.sql")),
            rollup: dialect.render(include_str!("sql/sqlite_rollup.sql")),
            shared,
        };
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            sql: Arc::new(sql),
            path,
        })
    }

    /// Runs `f` on the connection, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Statements) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (conn, sql) = (self.conn.clone(), self.sql.clone());
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c, &sql)
        })
        .await
        .map_err(fail)?
        .map_err(fail)
    }
}

fn u(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn totals(row: (i64, i64)) -> Totals {
    Totals {
        total: u(row.0),
        allowed: u(row.1),
        blocked: u(row.0 - row.1),
    }
}

#[async_trait]
impl LogSink for SqliteSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn write(&self, events: &[DecisionEvent]) -> Result<u64, BackendError> {
        let events = events.to_vec();
        self.with(move |c, sql| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut rollups: std::collections::BTreeMap<(i64, &str, &str, &str, bool), (i64, i64)> =
                Default::default();
            let mut new = 0;
            {
                let mut insert = tx.prepare_cached(&sql.insert)?;
                for e in &events {
                    let n = insert.execute(params![
                        e.origin,
                        e.seq,
                        e.ts_us,
                        e.key,
                        e.policy.as_ref(),
                        e.window.as_ref(),
                        e.tier,
                        e.path,
                        e.method,
                        e.allowed,
                        e.action.as_ref(),
                        e.count,
                        e.limit,
                        e.cost,
                        e.ip.map(|ip| ip.to_string()),
                        e.user,
                        e.host.as_ref(),
                        i64::try_from(e.config_version).unwrap_or(i64::MAX),
                    ])?;
                    if n == 1 {
                        new += 1;
                        let r = rollups
                            .entry((e.minute(), &e.policy, &e.window, &e.key, e.allowed))
                            .or_default();
                        r.0 += 1;
                        r.1 += i64::from(e.cost);
                    }
                }
                let mut up = tx.prepare_cached(&sql.rollup)?;
                for ((minute, policy, window, key, allowed), (n, cost)) in &rollups {
                    up.execute(params![minute, policy, window, key, allowed, n, cost])?;
                }
            }
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn cleanup(
        &self,
        events_before_us: i64,
        rollups_before: i64,
        batch: u32,
    ) -> Result<Cleaned, BackendError> {
        delete_in_batches(events_before_us, rollups_before, batch, |table, before| {
            self.with(move |c, sql| {
                let stmt = match table {
                    Table::Events => &sql.shared.delete_events,
                    Table::Rollups => &sql.shared.delete_rollups,
                };
                c.prepare_cached(stmt)?
                    .execute(params![before, batch])
                    .map(|n| n as u64)
            })
        })
        .await
    }

    async fn totals(&self, span: &Span) -> Result<Totals, BackendError> {
        let s = span.clone();
        self.with(move |c, sql| {
            c.prepare_cached(&sql.shared.totals)?
                .query_row(params![s.since, s.until, s.policy], |r| {
                    Ok(totals((r.get(0)?, r.get(1)?)))
                })
        })
        .await
    }

    async fn top_offenders(&self, span: &Span, limit: u32) -> Result<Vec<Offender>, BackendError> {
        let s = span.clone();
        self.with(move |c, sql| {
            c.prepare_cached(&sql.shared.top_offenders)?
                .query_map(params![s.since, s.until, s.policy, limit], |r| {
                    Ok(Offender {
                        key: r.get(0)?,
                        blocked: u(r.get(1)?),
                        total: u(r.get(2)?),
                    })
                })?
                .collect()
        })
        .await
    }

    async fn rule_hits(&self, span: &Span) -> Result<Vec<RuleHits>, BackendError> {
        let s = span.clone();
        self.with(move |c, sql| {
            c.prepare_cached(&sql.shared.rule_hits)?
                .query_map(params![s.since, s.until, s.policy], |r| {
                    Ok(RuleHits {
                        policy: r.get(0)?,
                        window: r.get(1)?,
                        hits: u(r.get(2)?),
                        blocks: u(r.get(3)?),
                    })
                })?
                .collect()
        })
        .await
    }

    async fn series(&self, span: &Span, bucket: i64) -> Result<Vec<Point>, BackendError> {
        let s = span.clone();
        self.with(move |c, sql| {
            c.prepare_cached(&sql.shared.series)?
                .query_map(params![s.since, s.until, s.policy, bucket], |r| {
                    Ok(Point {
                        at: r.get(0)?,
                        allowed: u(r.get(1)?),
                        blocked: u(r.get(2)?),
                    })
                })?
                .collect()
        })
        .await
    }

    async fn key_totals(&self, span: &Span, key: &str) -> Result<Totals, BackendError> {
        let (s, key) = (span.clone(), key.to_string());
        self.with(move |c, sql| {
            c.prepare_cached(&sql.shared.key_totals)?
                .query_row(params![s.since, s.until, s.policy, key], |r| {
                    Ok(totals((r.get(0)?, r.get(1)?)))
                })
        })
        .await
    }

    async fn key_events(
        &self,
        span: &Span,
        key: &str,
        recent: u32,
    ) -> Result<KeyEvents, BackendError> {
        let (s, key) = (span.clone(), key.to_string());
        self.with(move |c, sql| {
            let (from, to) = (
                s.since.saturating_mul(1_000_000),
                s.until.saturating_mul(1_000_000),
            );
            let seen: (Option<i64>, Option<i64>) = c
                .prepare_cached(&sql.shared.key_seen)?
                .query_row(params![from, to, s.policy, key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let by_path = c
                .prepare_cached(&sql.shared.key_paths)?
                .query_map(params![from, to, s.policy, key], |r| {
                    Ok(PathHits {
                        path: r.get(0)?,
                        total: u(r.get(1)?),
                        blocked: u(r.get(2)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let recent = c
                .prepare_cached(&sql.shared.key_recent)?
                .query_map(params![from, to, s.policy, key, recent], |r| {
                    let ip: Option<String> = r.get(14)?;
                    Ok(DecisionEvent {
                        origin: r.get(0)?,
                        seq: r.get(1)?,
                        ts_us: r.get(2)?,
                        key: r.get(3)?,
                        policy: r.get::<_, String>(4)?.into(),
                        window: r.get::<_, String>(5)?.into(),
                        tier: r.get(6)?,
                        path: r.get(7)?,
                        method: r.get(8)?,
                        allowed: r.get(9)?,
                        action: r.get::<_, String>(10)?.into(),
                        count: r.get(11)?,
                        limit: r.get(12)?,
                        cost: r.get(13)?,
                        ip: ip.and_then(|t| t.parse().ok()),
                        user: r.get(15)?,
                        host: r.get::<_, String>(16)?.into(),
                        config_version: u(r.get(17)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(KeyEvents {
                first_last_us: seen.0.zip(seen.1),
                by_path,
                recent,
            })
        })
        .await
    }

    async fn append_audit(&self, draft: &StoredRecord) -> Result<StoredRecord, BackendError> {
        let draft = draft.clone();
        self.with(move |c, sql| {
            // The chain's last link is read and the next written in one
            // immediate transaction: no other writer of the file comes between.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let last: Option<(i64, String)> = tx
                .prepare_cached(&sql.shared.audit_last)?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let rec = audit_trail::chained(draft, last);
            tx.prepare_cached(&sql.shared.audit_insert)?
                .execute(params![
                    rec.seq,
                    rec.ts_us,
                    rec.actor,
                    rec.action,
                    rec.policy,
                    rec.subject,
                    rec.detail,
                    rec.prev,
                    rec.hash
                ])?;
            tx.commit()?;
            Ok(rec)
        })
        .await
    }

    async fn audit_records(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, BackendError> {
        self.with(move |c, sql| {
            c.prepare_cached(&sql.shared.audit_read)?
                .query_map(params![after_seq, limit], |r| {
                    Ok(StoredRecord {
                        seq: r.get(0)?,
                        ts_us: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        policy: r.get(4)?,
                        subject: r.get(5)?,
                        detail: r.get(6)?,
                        prev: r.get(7)?,
                        hash: r.get(8)?,
                    })
                })?
                .collect()
        })
        .await
    }
}
