//! The shared sink: the decision log in PostgreSQL, in the schema of a
//! `[stores.NAME]` of engine `postgres` (its URL, TLS and pool settings),
//! written by any number of hosts. A batch is one statement
//! (`sql/postgres_write.sql`: arrays through `unnest`), so a host's batch
//! is all or nothing and costs one round trip.

use super::audit_trail;
use super::event::DecisionEvent;
use super::sink::{
    delete_in_batches, Cleaned, Dialect, KeyEvents, LogSink, Offender, PathHits, Point, Queries,
    RuleHits, Span, StoredRecord, Table, Totals,
};
use crate::config::StoreConfig;
use crate::engine::postgres::{backend, connection};
use crate::error::{BackendError, Error};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_postgres::types::ToSql;

const KIND: &str = "postgres";

/// The decision log in PostgreSQL.
pub struct PostgresSink {
    pool: Pool,
    sql: Queries,
    write: String,
    schema: String,
    timeout: Duration,
    url: String,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .finish()
    }
}

fn u(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PostgresSink {
    /// Connects through the store `name` and creates the log's tables in
    /// its schema when missing.
    pub async fn connect(name: &str, config: &StoreConfig) -> Result<Self, Error> {
        let conn = connection(name, config)?;
        let connect_err = Error::connect(name, &conn.redacted);
        let schema = config.schema().to_string();
        let dialect = Dialect {
            table_prefix: format!("{schema}."),
            rowid: "ctid",
            binary: "COLLATE \"C\"",
            question_marks: false,
        };
        let sql = Queries::new(&dialect);
        let sink = Self {
            write: dialect.render(include_str!("sql/postgres_write.sql")),
            pool: conn.pool,
            sql,
            schema,
            timeout: config.response_timeout().max(Duration::from_secs(10)),
            url: conn.redacted,
        };
        sink.migrate().await.map_err(|e| connect_err(e.message))?;
        Ok(sink)
    }

    async fn migrate(&self) -> Result<(), BackendError> {
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        // Hosts starting together would race on CREATE TABLE IF NOT EXISTS.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('ratesync.decision_log'), hashtext($1))",
            &[&self.schema],
        )
        .await
        .map_err(backend)?;
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema))
            .await
            .map_err(backend)?;
        for stmt in &self.sql.schema {
            tx.batch_execute(stmt).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, BackendError> {
        crate::engine::within(KIND, self.timeout, async {
            let client = self.pool.get().await.map_err(backend)?;
            let stmt = client.prepare_cached(sql).await.map_err(backend)?;
            client.query(&stmt, params).await.map_err(backend)
        })
        .await
    }

    async fn totals_of(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Totals, BackendError> {
        let rows = self.rows(sql, params).await?;
        let (total, allowed): (i64, i64) = rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
        Ok(Totals {
            total: u(total),
            allowed: u(allowed),
            blocked: u(total - allowed),
        })
    }
}

fn i(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[async_trait]
impl LogSink for PostgresSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn write(&self, events: &[DecisionEvent]) -> Result<u64, BackendError> {
        if events.is_empty() {
            return Ok(0);
        }
        let col = |f: fn(&DecisionEvent) -> i64| events.iter().map(f).collect::<Vec<i64>>();
        let text = |f: fn(&DecisionEvent) -> String| events.iter().map(f).collect::<Vec<String>>();
        let opt = |f: fn(&DecisionEvent) -> Option<String>| {
            events.iter().map(f).collect::<Vec<Option<String>>>()
        };
        let origin = col(|e| e.origin);
        let seq = col(|e| e.seq);
        let ts = col(|e| e.ts_us);
        let key = text(|e| e.key.clone());
        let policy = text(|e| e.policy.to_string());
        let window = text(|e| e.window.to_string());
        let tier = opt(|e| e.tier.clone());
        let path = opt(|e| e.path.clone());
        let method = opt(|e| e.method.clone());
        let allowed: Vec<bool> = events.iter().map(|e| e.allowed).collect();
        let action = text(|e| e.action.to_string());
        let count = col(|e| i64::from(e.count));
        let limit: Vec<Option<i64>> = events.iter().map(|e| e.limit.map(i64::from)).collect();
        let cost = col(|e| i64::from(e.cost));
        let ip = opt(|e| e.ip.map(|ip| ip.to_string()));
        let user = opt(|e| e.user.clone());
        let host = text(|e| e.host.to_string());
        let version = col(|e| i(e.config_version));
        let rows = self
            .rows(
                &self.write,
                &[
                    &origin, &seq, &ts, &key, &policy, &window, &tier, &path, &method, &allowed,
                    &action, &count, &limit, &cost, &ip, &user, &host, &version,
                ],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| u(r.get(0))))
    }

    async fn cleanup(
        &self,
        events_before_us: i64,
        rollups_before: i64,
        batch: u32,
    ) -> Result<Cleaned, BackendError> {
        let batch_i = i64::from(batch);
        delete_in_batches(
            events_before_us,
            rollups_before,
            batch,
            |table, before| async move {
                let sql = match table {
                    Table::Events => &self.sql.delete_events,
                    Table::Rollups => &self.sql.delete_rollups,
                };
                crate::engine::within(KIND, self.timeout, async {
                    let client = self.pool.get().await.map_err(backend)?;
                    let stmt = client.prepare_cached(sql).await.map_err(backend)?;
                    client
                        .execute(&stmt, &[&before, &batch_i])
                        .await
                        .map_err(backend)
                })
                .await
            },
        )
        .await
    }

    async fn totals(&self, s: &Span) -> Result<Totals, BackendError> {
        self.totals_of(&self.sql.totals, &[&s.since, &s.until, &s.policy])
            .await
    }

    async fn top_offenders(&self, s: &Span, limit: u32) -> Result<Vec<Offender>, BackendError> {
        let rows = self
            .rows(
                &self.sql.top_offenders,
                &[&s.since, &s.until, &s.policy, &i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Offender {
                key: r.get(0),
                blocked: u(r.get(1)),
                total: u(r.get(2)),
            })
            .collect())
    }

    async fn rule_hits(&self, s: &Span) -> Result<Vec<RuleHits>, BackendError> {
        let rows = self
            .rows(&self.sql.rule_hits, &[&s.since, &s.until, &s.policy])
            .await?;
        Ok(rows
            .iter()
            .map(|r| RuleHits {
                policy: r.get(0),
                window: r.get(1),
                hits: u(r.get(2)),
                blocks: u(r.get(3)),
            })
            .collect())
    }

    async fn series(&self, s: &Span, bucket: i64) -> Result<Vec<Point>, BackendError> {
        let rows = self
            .rows(&self.sql.series, &[&s.since, &s.until, &s.policy, &bucket])
            .await?;
        Ok(rows
            .iter()
            .map(|r| Point {
                at: r.get(0),
                allowed: u(r.get(1)),
                blocked: u(r.get(2)),
            })
            .collect())
    }

    async fn key_totals(&self, s: &Span, key: &str) -> Result<Totals, BackendError> {
        self.totals_of(&self.sql.key_totals, &[&s.since, &s.until, &s.policy, &key])
            .await
    }

    async fn key_events(
        &self,
        s: &Span,
        key: &str,
        recent: u32,
    ) -> Result<KeyEvents, BackendError> {
        let (from, to) = (
            s.since.saturating_mul(1_000_000),
            s.until.saturating_mul(1_000_000),
        );
        let seen = self
            .rows(&self.sql.key_seen, &[&from, &to, &s.policy, &key])
            .await?;
        let first_last_us = seen.first().and_then(|r| {
            let (a, b): (Option<i64>, Option<i64>) = (r.get(0), r.get(1));
            a.zip(b)
        });
        let by_path = self
            .rows(&self.sql.key_paths, &[&from, &to, &s.policy, &key])
            .await?
            .iter()
            .map(|r| PathHits {
                path: r.get(0),
                total: u(r.get(1)),
                blocked: u(r.get(2)),
            })
            .collect();
        let recent = self
            .rows(
                &self.sql.key_recent,
                &[&from, &to, &s.policy, &key, &i64::from(recent)],
            )
            .await?
            .iter()
            .map(|r| {
                let ip: Option<String> = r.get(14);
                let n = |i: usize| u32::try_from(r.get::<_, i64>(i)).unwrap_or(u32::MAX);
                DecisionEvent {
                    origin: r.get(0),
                    seq: r.get(1),
                    ts_us: r.get(2),
                    key: r.get(3),
                    policy: r.get::<_, String>(4).into(),
                    window: r.get::<_, String>(5).into(),
                    tier: r.get(6),
                    path: r.get(7),
                    method: r.get(8),
                    allowed: r.get(9),
                    action: r.get::<_, String>(10).into(),
                    count: n(11),
                    limit: r
                        .get::<_, Option<i64>>(12)
                        .map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
                    cost: n(13),
                    ip: ip.and_then(|t| t.parse().ok()),
                    user: r.get(15),
                    host: r.get::<_, String>(16).into(),
                    config_version: u(r.get(17)),
                }
            })
            .collect();
        Ok(KeyEvents {
            first_last_us,
            by_path,
            recent,
        })
    }

    async fn append_audit(&self, draft: &StoredRecord) -> Result<StoredRecord, BackendError> {
        crate::engine::within(KIND, self.timeout, async {
            let mut client = self.pool.get().await.map_err(backend)?;
            let tx = client.transaction().await.map_err(backend)?;
            // One appender at a time across every host: the chain has one
            // last link.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('ratesync.audit'), hashtext($1))",
                &[&self.schema],
            )
            .await
            .map_err(backend)?;
            let last = tx
                .query_opt(&self.sql.audit_last, &[])
                .await
                .map_err(backend)?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
            let rec = audit_trail::chained(draft.clone(), last);
            tx.execute(
                &self.sql.audit_insert,
                &[
                    &rec.seq,
                    &rec.ts_us,
                    &rec.actor,
                    &rec.action,
                    &rec.policy,
                    &rec.subject,
                    &rec.detail,
                    &rec.prev,
                    &rec.hash,
                ],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(rec)
        })
        .await
    }

    async fn audit_records(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, BackendError> {
        let rows = self
            .rows(&self.sql.audit_read, &[&after_seq, &i64::from(limit)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredRecord {
                seq: r.get(0),
                ts_us: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                policy: r.get(4),
                subject: r.get(5),
                detail: r.get(6),
                prev: r.get(7),
                hash: r.get(8),
            })
            .collect())
    }
}
