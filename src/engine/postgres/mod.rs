//! The PostgreSQL engine: every decision is one call of a PL/pgSQL function, atomic on the server.
//!
//! The schema and functions live in `engines/postgres/` and are applied at
//! connect, idempotently, inside a transaction that holds an advisory lock,
//! so many processes starting together migrate once; `schema_version`
//! records what was applied. Functions read the clock with
//! `clock_timestamp()` after taking the row lock, so host clocks play no part
//! (docs/design.md, Promises: 5), and work in integer microseconds like the Redis scripts.
//!
//! Calls go through a deadpool pool of `pool_size` connections, each with its
//! prepared statements cached. Rows are locked by the function itself (`FOR
//! UPDATE` on the key's row; an advisory transaction lock per key for leases),
//! never by a separate round trip. The tables are UNLOGGED: commits do not
//! wait for a WAL flush (docs/design.md, Engine notes), at the price that a server *crash*
//! empties them; a clean restart keeps them.
//!
//! Releases `pg_notify` the key's SHA-256 on `<schema>_released`; one
//! dedicated connection per engine `LISTEN`s and wakes local waiters,
//! reconnecting by itself. A background task deletes idle rows every
//! `sweep_seconds`, so no table grows without bound.

mod listen;
mod schema;
mod settings;
mod tls;

pub(crate) use settings::{check_limiter, check_settings};

use schema::{migrate, spawn_sweeper, sweep_all};
use tls::{tls_for, Tls};

use super::stripes::KeyStripes;
use super::{max_wait_arg, policy_window_args, script_args, within};
use super::{
    AbortOnDrop, BatchReservation, ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome,
    RateRequest, RateState, ReleaseHub, ReleaseListener, ReleaseSignal, Reservation,
};
use super::{ListChange, ListEntry, PolicyCheck, PolicyOutcome};
use crate::config::store::StoreConfig;
use crate::policy::rule::WindowRule;
use crate::quota::{ConcurrencySpec, RateSpec};
use crate::units::micros;

use crate::error::{BackendError, Error};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// How long a released holder stays fenced (see [`crate::lease::FENCE_NS`]).
const FENCE_US: i64 = (crate::lease::FENCE_NS / 1000) as i64;

/// The PostgreSQL engine (see the module docs).
pub struct PostgresEngine {
    pool: Pool,
    pg_config: tokio_postgres::Config,
    tls: Tls,
    schema: String,
    prefix: String,
    url: String,
    timeout: Duration,
    sql: Statements,
    releases: Arc<ReleaseHub>,
    listener: ReleaseListener,
    /// The store's `coalesce` setting.
    coalesce: bool,
    stripes: KeyStripes,
    _sweeper: AbortOnDrop,
}

/// The statements each decision runs, with the schema filled in.
struct Statements {
    reserve: String,
    reserve_many: String,
    reserve_all: String,
    rate_state: String,
    lease_acquire: String,
    lease_renew: String,
    lease_release: String,
    lease_state: String,
    sweep: String,
    reset: String,
    policy_check: String,
    policy_ban: String,
    list_add: String,
    list_remove: String,
    list_read: String,
}

impl Statements {
    fn new(s: &str) -> Self {
        Self {
            reserve: format!(
                "SELECT granted, wait_us, slot_us FROM {s}.reserve_n($1, $2, $3, $4, $5, $6)"
            ),
            reserve_many: format!(
                "SELECT granted, wait_us, slot_us FROM {s}.reserve_many($1, $2, $3, $4, $5, $6)"
            ),
            reserve_all: format!(
                "SELECT granted, wait_us, refused FROM {s}.reserve_all($1, $2, $3, $4, $5)"
            ),
            rate_state: format!("SELECT now_us, tat, grants FROM {s}.rate_state($1)"),
            lease_acquire: format!("SELECT acquired, n FROM {s}.lease_acquire($1, $2, $3, $4)"),
            lease_renew: format!("SELECT {s}.lease_renew($1, $2, $3)"),
            lease_release: format!("SELECT {s}.lease_release($1, $2, $3)"),
            lease_state: format!("SELECT now_us, holders, first_expiry FROM {s}.lease_state($1)"),
            sweep: format!("SELECT {s}.sweep($1)"),
            reset: format!("SELECT {s}.reset($1)"),
            policy_check: format!(
                "SELECT ban_us, ban_started, now_us, fit, tat, grants, first_slot, counts FROM {s}.policy_check($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            policy_ban: format!("SELECT {s}.policy_ban($1, $2)"),
            list_add: format!("SELECT {s}.policy_list_add($1, $2, $3)"),
            list_remove: format!("SELECT {s}.policy_list_remove($1, $2)"),
            list_read: format!("SELECT now_us, entry, expires_at FROM {s}.policy_list_read($1)"),
        }
    }
}

impl std::fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEngine")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Names this engine in errors.
const ENGINE: &str = "postgres";

/// A failed request, with its causes: tokio-postgres says only `db error`
/// and keeps the server's message (`index row size ... exceeds ...`) in the
/// source. Redacted, since a server message may quote a DSN.
pub(crate) fn backend(e: impl std::error::Error) -> BackendError {
    BackendError::new(ENGINE, crate::secret::redact(&causes(&e)))
}

/// An error and its causes, each once.
pub(super) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// The release channel's payload for a key: its SHA-256 in hex (see `lease_release`).
fn release_tag(state_key: &str) -> String {
    Sha256::digest(state_key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A store's pool, its parsed settings and TLS, and its redacted URL.
pub(crate) struct Connection {
    pub(crate) pool: Pool,
    pg_config: tokio_postgres::Config,
    tls: Tls,
    pub(crate) redacted: String,
}

/// Builds the pool of the store `name` (no connection is made yet), shared
/// by the engine and the decision log's PostgreSQL sink.
pub(crate) fn connection(name: &str, config: &StoreConfig) -> Result<Connection, Error> {
    let (url, redacted) = config.connect_url();
    let connect_err = Error::connect(name, &redacted);
    let timeout = config.response_timeout();
    let mut pg_config: tokio_postgres::Config =
        url.parse().map_err(|e| connect_err(format!("{e}")))?;
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(config.connect_timeout());
    }
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("ratesync");
    }
    let tls = tls_for(&pg_config, config.tls_ca_file.as_deref()).map_err(&connect_err)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &tls {
        Tls::None => Manager::from_config(pg_config.clone(), NoTls, manager_config),
        Tls::Rustls(t) => Manager::from_config(pg_config.clone(), t.clone(), manager_config),
    };
    let pool = Pool::builder(manager)
        .max_size(config.pool_size())
        .wait_timeout(Some(timeout))
        // Decisions are bounded by `response_timeout` as a whole (`one`);
        // this bound lets the first connection and the migration take
        // longer on a server that has just started.
        .create_timeout(Some(config.connect_timeout()))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| connect_err(e.to_string()))?;
    Ok(Connection {
        pool,
        pg_config,
        tls,
        redacted,
    })
}

impl PostgresEngine {
    /// Connects to the store `name` described by `config` (its `url` or `dsn`
    /// is required) and applies the schema if needed.
    pub async fn connect(name: &str, config: &StoreConfig) -> Result<Self, Error> {
        let Connection {
            pool,
            pg_config,
            tls,
            redacted,
        } = connection(name, config)?;
        let connect_err = Error::connect(name, &redacted);
        let timeout = config.response_timeout();
        let schema = config.schema().to_string();
        migrate(&pool, &schema)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let sql = Statements::new(&schema);
        let sweeper = spawn_sweeper(pool.clone(), sql.sweep.clone(), config.sweep_interval());
        Ok(Self {
            pool,
            pg_config,
            tls,
            prefix: config.prefix().to_string(),
            schema,
            url: redacted,
            timeout,
            sql,
            releases: Arc::new(ReleaseHub::new()),
            listener: ReleaseListener::default(),
            coalesce: config.coalesce(),
            stripes: KeyStripes::new(),
            _sweeper: sweeper,
        })
    }

    /// The row key of a limiter key: the store's prefix, then the encoded key.
    fn key(&self, ctx: &Ctx<'_>) -> String {
        format!("{}:{}", self.prefix, ctx.key.encoded())
    }

    /// Runs one prepared statement and returns its single row, all within
    /// `response_timeout` (pool wait included).
    async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, BackendError> {
        within(ENGINE, self.timeout, async {
            let client = self.pool.get().await.map_err(backend)?;
            let stmt = client.prepare_cached(sql).await.map_err(backend)?;
            client.query_one(&stmt, params).await.map_err(backend)
        })
        .await
    }

    /// Like [`one`](Self::one), for a statement answering any number of
    /// rows, with at most one such statement per key of `keys` in flight
    /// from this process (see [`one_per_key`](Self::one_per_key)).
    async fn rows_per_key(
        &self,
        keys: &[&str],
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, BackendError> {
        let _turns = within(ENGINE, self.timeout, async {
            Ok(self.stripes.turn(keys).await)
        })
        .await?;
        within(ENGINE, self.timeout, async {
            let client = self.pool.get().await.map_err(backend)?;
            let stmt = client.prepare_cached(sql).await.map_err(backend)?;
            client.query(&stmt, params).await.map_err(backend)
        })
        .await
    }

    /// Like [`one`](Self::one), for a statement that locks the rows of `keys`,
    /// with at most one such statement per key in flight from this process.
    ///
    /// A hot row serialises its writers in the server anyway; letting every
    /// pooled connection queue on its lock makes the server slower, not
    /// faster (pgbench of `reserve` on one key here: about 9,300/s from 4
    /// clients, 2,200/s from 32). Waiting here instead keeps the queue in
    /// memory and the server's lock short (see [`KeyStripes`]).
    async fn one_per_key(
        &self,
        keys: &[&str],
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, BackendError> {
        let _turns = within(ENGINE, self.timeout, async {
            Ok(self.stripes.turn(keys).await)
        })
        .await?;
        self.one(sql, params).await
    }

    /// Deletes idle rows now, until none is left; returns how many. The
    /// background sweep does this every `sweep_seconds`.
    pub async fn sweep(&self) -> Result<u64, BackendError> {
        sweep_all(&self.pool, &self.sql.sweep).await
    }

    /// Starts the LISTEN connection on first use (see [`ReleaseListener`]).
    async fn ensure_listener(&self) {
        let (config, tls) = (self.pg_config.clone(), self.tls.clone());
        let channel = format!("{}_released", self.schema);
        self.listener
            .ensure("postgres LISTEN connection", &self.releases, move |l| {
                let (config, tls, channel) = (config.clone(), tls.clone(), channel.clone());
                async move {
                    match tls {
                        Tls::None => listen::listen(&config, NoTls, &channel, l).await,
                        Tls::Rustls(t) => listen::listen(&config, t, &channel, l).await,
                    }
                    .map_err(|e| e.to_string())
                }
            })
            .await;
    }
}

#[async_trait]
impl Engine for PostgresEngine {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn reserve_n(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError> {
        let (kind, p1, p2) = script_args(rate);
        let key = self.key(&ctx);
        let cost = i32::try_from(cost).unwrap_or(i32::MAX);
        let row = self
            .one_per_key(
                &[&key],
                &self.sql.reserve,
                &[&key, &kind, &p1, &p2, &max_wait_arg(max_wait), &cost],
            )
            .await?;
        Ok(Reservation::from_wire(row.get(0), row.get(1), row.get(2)))
    }

    fn coalesces(&self) -> bool {
        self.coalesce
    }

    async fn reserve_many(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        requests: &[RateRequest],
    ) -> Result<Vec<Reservation>, BackendError> {
        let (kind, p1, p2) = script_args(rate);
        let key = self.key(&ctx);
        let max_waits: Vec<i64> = requests.iter().map(|r| max_wait_arg(r.max_wait)).collect();
        let costs: Vec<i32> = requests
            .iter()
            .map(|r| i32::try_from(r.cost).unwrap_or(i32::MAX))
            .collect();
        let row = self
            .one_per_key(
                &[&key],
                &self.sql.reserve_many,
                &[&key, &kind, &p1, &p2, &max_waits, &costs],
            )
            .await?;
        let (granted, waits, slots): (Vec<bool>, Vec<i64>, Vec<i64>) =
            (row.get(0), row.get(1), row.get(2));
        Ok(granted
            .into_iter()
            .zip(waits)
            .zip(slots)
            .map(|((g, w), s)| Reservation::from_wire(g, w, s))
            .collect())
    }

    async fn reserve_all(
        &self,
        items: &[(Ctx<'_>, RateSpec)],
        max_wait: Duration,
    ) -> Result<BatchReservation, BackendError> {
        let mut keys = Vec::with_capacity(items.len());
        let (mut kinds, mut p1s, mut p2s) = (Vec::new(), Vec::new(), Vec::new());
        for (ctx, rate) in items {
            let key = self.key(ctx);
            if keys.contains(&key) {
                return Err(BackendError::new(
                    ENGINE,
                    format!(
                        "state key `{}` appears twice in one batch",
                        ctx.key.encoded()
                    ),
                ));
            }
            keys.push(key);
            let (k, p1, p2) = script_args(rate);
            kinds.push(k);
            p1s.push(p1);
            p2s.push(p2);
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let row = self
            .one_per_key(
                &key_refs,
                &self.sql.reserve_all,
                &[&keys, &kinds, &p1s, &p2s, &max_wait_arg(max_wait)],
            )
            .await?;
        let refused: i32 = row.get(2);
        Ok(BatchReservation::from_wire(
            row.get(0),
            row.get(1),
            i64::from(refused),
        ))
    }

    async fn rate_state(&self, ctx: Ctx<'_>, rate: &RateSpec) -> Result<RateState, BackendError> {
        let key = self.key(&ctx);
        let row = self.one(&self.sql.rate_state, &[&key]).await?;
        let (now, tat, grants): (i64, i64, Vec<i64>) = (row.get(0), row.get(1), row.get(2));
        Ok(RateState::from_wire(rate, now, tat, &grants))
    }

    async fn acquire_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError> {
        let key = self.key(&ctx);
        let max = i32::try_from(spec.max).unwrap_or(i32::MAX);
        let row = self
            .one_per_key(
                &[&key],
                &self.sql.lease_acquire,
                &[&key, &holder.as_str(), &micros(spec.lease), &max],
            )
            .await?;
        let (acquired, n): (bool, i64) = (row.get(0), row.get(1));
        Ok(LeaseOutcome::from_wire(acquired, n))
    }

    async fn renew_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        let key = self.key(&ctx);
        let row = self
            .one(
                &self.sql.lease_renew,
                &[&key, &holder.as_str(), &micros(lease)],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn release_lease(&self, ctx: Ctx<'_>, holder: &HolderId) -> Result<bool, BackendError> {
        let key = self.key(&ctx);
        let row = self
            .one(
                &self.sql.lease_release,
                &[&key, &holder.as_str(), &FENCE_US],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn lease_state(
        &self,
        ctx: Ctx<'_>,
        spec: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError> {
        let key = self.key(&ctx);
        let row = self.one(&self.sql.lease_state, &[&key]).await?;
        let (now, holders, first): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        Ok(ConcurrencyState::from_wire(spec.max, now, holders, first))
    }

    async fn describe(&self) -> Result<String, BackendError> {
        let row = self
            .one(
                &format!(
                    "SELECT current_setting('server_version'), \
                     (SELECT coalesce(max(version), 0) FROM {}.schema_version)",
                    self.schema
                ),
                &[],
            )
            .await?;
        let (server, version): (String, i32) = (row.get(0), row.get(1));
        Ok(format!(
            "PostgreSQL {server}, schema `{}` at version {version} of {}",
            self.schema,
            schema::MIGRATIONS.len()
        ))
    }

    fn runs_policies(&self) -> bool {
        true
    }

    async fn check_policy(
        &self,
        ctx: Ctx<'_>,
        check: &PolicyCheck<'_>,
    ) -> Result<PolicyOutcome, BackendError> {
        let key = self.key(&ctx);
        let mut wins = Vec::new();
        let mut cols: [Vec<i64>; 6] = Default::default();
        for rule in check.rules {
            let args = policy_window_args(rule);
            wins.push(WindowRule::state_name(
                &rule.algorithm,
                rule.name,
                rule.window,
            ));
            for (col, a) in cols.iter_mut().zip(args) {
                col.push(a);
            }
        }
        let kinds: Vec<i32> = cols[0].iter().map(|&k| k as i32).collect();
        let actions: Vec<i32> = cols[4].iter().map(|&a| a as i32).collect();
        let cost = i32::try_from(check.cost).unwrap_or(i32::MAX);
        let rows = self
            .rows_per_key(
                &[&key],
                &self.sql.policy_check,
                &[
                    &key,
                    &wins,
                    &kinds,
                    &cols[1],
                    &cols[2],
                    &cols[3],
                    &actions,
                    &cols[5],
                    &cost,
                    &check.shadow,
                    &check.commit,
                ],
            )
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| BackendError::new(ENGINE, "policy_check answered no row"))?;
        let (ban, started, now): (i64, bool, i64) = (first.get(0), first.get(1), first.get(2));
        let mut fits = Vec::with_capacity(rows.len());
        let mut states = Vec::with_capacity(rows.len());
        for (row, rule) in rows.iter().zip(check.rules) {
            // The one row of a ban that refused first carries no window;
            // `from_wire` reads the ban.
            let Some(fit) = row.get::<_, Option<i64>>(3) else {
                break;
            };
            fits.push(fit);
            states.push(match policy_window_args(rule)[0] {
                1 => vec![row.get::<_, i64>(4)],
                2 => row.get::<_, Vec<i64>>(5),
                _ => {
                    let mut s = vec![row.get::<_, i64>(6)];
                    s.extend(row.get::<_, Vec<i64>>(7));
                    s
                }
            });
        }
        PolicyOutcome::from_wire(check.rules, ban, started, now, &fits, &states)
            .map_err(|e| BackendError::new(ENGINE, e))
    }

    async fn set_ban(
        &self,
        ctx: Ctx<'_>,
        duration: Option<Duration>,
    ) -> Result<bool, BackendError> {
        let key = self.key(&ctx);
        let len = duration.map_or(-1, micros);
        let row = self
            .one_per_key(&[&key], &self.sql.policy_ban, &[&key, &len])
            .await?;
        Ok(row.get(0))
    }

    async fn list_change(
        &self,
        ctx: Ctx<'_>,
        change: ListChange<'_>,
    ) -> Result<bool, BackendError> {
        let key = self.key(&ctx);
        let row = match change {
            ListChange::Add { entry, ttl } => {
                let ttl = ttl.map_or(-1, micros);
                self.one(&self.sql.list_add, &[&key, &entry, &ttl]).await?
            }
            ListChange::Remove { entry } => {
                self.one(&self.sql.list_remove, &[&key, &entry]).await?
            }
        };
        Ok(row.get(0))
    }

    async fn list_read(&self, ctx: Ctx<'_>) -> Result<Vec<ListEntry>, BackendError> {
        let key = self.key(&ctx);
        let rows = self.rows_per_key(&[], &self.sql.list_read, &[&key]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let (now, exp): (i64, i64) = (r.get(0), r.get(2));
                ListEntry {
                    entry: r.get(1),
                    left: (exp > 0).then(|| crate::units::from_micros(exp - now)),
                }
            })
            .collect())
    }

    async fn reset(&self, ctx: Ctx<'_>) -> Result<u64, BackendError> {
        let key = self.key(&ctx);
        let row = self.one(&self.sql.reset, &[&key]).await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn subscribe_releases(&self, ctx: Ctx<'_>) -> Result<ReleaseSignal, BackendError> {
        // Subscribe locally first: a release after this point is never lost.
        let signal = self.releases.subscribe(&release_tag(&self.key(&ctx)));
        self.ensure_listener().await;
        Ok(signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("db error")
        }
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ERROR: index row size 3000 exceeds btree version 4 maximum 2704 (password=hunter2)")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    /// tokio-postgres says only `db error` and keeps the server's message in
    /// the source: a backend error carries both, redacted.
    #[test]
    fn backend_errors_keep_their_cause() {
        let e = backend(Outer(Inner));
        assert_eq!(
            e.message,
            "db error: ERROR: index row size 3000 exceeds btree version 4 maximum 2704 (password=***)"
        );
    }
}
