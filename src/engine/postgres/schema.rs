//! The schema: migrations applied once under an advisory lock, and the
//! sweep of idle rows.

use super::{backend, causes};
use crate::engine::AbortOnDrop;
use crate::error::BackendError;
use deadpool_postgres::Pool;
use std::time::Duration;

/// The migrations, in order: (version, SQL with `__SCHEMA__` for the schema).
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../engines/postgres/001_init.sql")),
    (2, include_str!("../../../engines/postgres/002_fences.sql")),
    (3, include_str!("../../../engines/postgres/003_reset.sql")),
    (4, include_str!("../../../engines/postgres/004_weights.sql")),
    (
        5,
        include_str!("../../../engines/postgres/005_coalescing.sql"),
    ),
    (
        6,
        include_str!("../../../engines/postgres/006_policies.sql"),
    ),
    (
        7,
        include_str!("../../../engines/postgres/007_policy_lists.sql"),
    ),
];

/// Idle rows deleted per table by one sweep call; a sweep repeats while full.
const SWEEP_BATCH: i32 = 5_000;

/// Applies the migrations not yet recorded in `<schema>.schema_version`, in
/// one transaction serialised by an advisory lock on the schema's name.
pub(super) async fn migrate(pool: &Pool, schema: &str) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| causes(&e))?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('ratesync.migrate'), hashtext($1))",
        &[&schema],
    )
    .await
    .map_err(|e| format!("taking the migration lock: {e}"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
           version int PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(|e| format!("creating schema {schema}: {e}"))?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(format!(
            "schema {schema} is at version {current}, newer than this build of ratesync knows ({newest}); upgrade ratesync or use another schema"
        ));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(&sql.replace("__SCHEMA__", schema))
            .await
            .map_err(|e| format!("applying migration {version} to schema {schema}: {e}"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(schema, version, "ratesync schema migrated");
    }
    tx.commit().await.map_err(|e| e.to_string())
}

pub(super) async fn sweep_all(pool: &Pool, sql: &str) -> Result<u64, BackendError> {
    let client = pool.get().await.map_err(backend)?;
    let stmt = client.prepare_cached(sql).await.map_err(backend)?;
    let mut total = 0u64;
    loop {
        let deleted: i64 = client
            .query_one(&stmt, &[&SWEEP_BATCH])
            .await
            .map_err(backend)?
            .get(0);
        total += u64::try_from(deleted).unwrap_or(0);
        if deleted < i64::from(SWEEP_BATCH) {
            return Ok(total);
        }
    }
}

pub(super) fn spawn_sweeper(pool: Pool, sql: String, every: Duration) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match sweep_all(&pool, &sql).await {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "postgres sweep"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "postgres sweep failed; retrying later"),
            }
        }
    }))
}
