//! The Redis engine: every decision is one EVALSHA of a Lua script, atomic on the server.
//!
//! The scripts live in `engines/redis/` and read the server's clock with
//! `TIME`, so host clocks play no part in a decision (docs/design.md, Promises: 5). Each
//! script is `lib.lua` followed by its own body, because Redis has no script
//! includes. Every call is an EVALSHA that loads the script on NOSCRIPT
//! (`durable.rs`), followed, for writes a grant depends on, by a `WAIT`
//! for `replica_acks` replicas in the same pipeline.
//!
//! Commands go through one [`ConnectionManager`]: a multiplexed connection
//! that many tasks share (calls are pipelined, not queued behind each other)
//! and that reconnects by itself after an outage; or, for a store whose url
//! names a Redis Cluster, through redis-rs's cluster client (see `cluster.rs`).
//!
//! Keys are `{prefix}:{<encoded key>}:<kind>` where the braces are a Redis
//! Cluster hash tag, so every key of one limiter key lands in one slot:
//! `r` holds a bucket's TAT or a window's grant list, `c` the concurrency
//! leases, `f` the fences of holders released before their acquire arrived
//! (see [`crate::lease::FENCE_NS`]). The encoded key uses only `[-_=.a-zA-Z0-9]` (see [`crate::StateKey`]),
//! so it can neither contain a brace nor collide with another key. Releases are
//! published on `{prefix}:released:<encoded key>`; one pattern subscription
//! per engine feeds the in-process [`ReleaseHub`].
//!
//! Numbers: Redis truncates Lua numbers to integers in replies, so scripts
//! work in integer microseconds. A token bucket's emission interval is
//! rounded *up* to a whole microsecond (admitting slightly less, never more):
//! at 10,000/s it is exact; at 7,000/s the admitted rate is 6,993/s.

mod cluster;
mod durable;

use super::{max_wait_arg, policy_window_args, script_args, RateArgs};
use super::{
    BatchReservation, ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome, Listening,
    RateRequest, RateState, ReleaseHub, ReleaseListener, ReleaseSignal, Reservation,
};
use super::{ListChange, ListEntry, PolicyCheck, PolicyOutcome};
use crate::config::store::SettingError;
use crate::config::store::StoreConfig;
use crate::policy::rule::WindowRule;
use crate::quota::LimiterSpec;
use crate::quota::{ConcurrencySpec, RateSpec};
use crate::secret::redact;
use crate::units::micros;

use crate::error::{BackendError, Error};
use async_trait::async_trait;
use cluster::Conn;
use durable::Call;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::Script;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIB: &str = include_str!("../../../engines/redis/lib.lua");

/// The full text of a script as the engine sends it: `lib.lua`, then the body.
fn source(body: &str) -> String {
    format!("{LIB}\n{body}")
}

/// The text the engine runs for the script `name` (the file stem under
/// `engines/redis/`, e.g. `"reserve"`), for tools that measure the same
/// script outside the engine, such as `redis-benchmark` in `benches/redis.rs`.
/// `None` for an unknown name.
pub fn script_source(name: &str) -> Option<String> {
    let body = match name {
        "reserve" => include_str!("../../../engines/redis/reserve.lua"),
        "reserve_many" => include_str!("../../../engines/redis/reserve_many.lua"),
        "reserve_all" => include_str!("../../../engines/redis/reserve_all.lua"),
        "rate_state" => include_str!("../../../engines/redis/rate_state.lua"),
        "lease_acquire" => include_str!("../../../engines/redis/lease_acquire.lua"),
        "lease_renew" => include_str!("../../../engines/redis/lease_renew.lua"),
        "lease_release" => include_str!("../../../engines/redis/lease_release.lua"),
        "lease_state" => include_str!("../../../engines/redis/lease_state.lua"),
        "reset" => include_str!("../../../engines/redis/reset.lua"),
        "policy" => include_str!("../../../engines/redis/policy.lua"),
        "ban" => include_str!("../../../engines/redis/ban.lua"),
        "list" => include_str!("../../../engines/redis/list.lua"),
        _ => return None,
    };
    Some(source(body))
}

struct Scripts {
    reserve: Script,
    reserve_many: Script,
    reserve_all: Script,
    rate_state: Script,
    lease_acquire: Script,
    lease_renew: Script,
    lease_release: Script,
    lease_state: Script,
    reset: Script,
    policy: Script,
    ban: Script,
    list: Script,
}

impl Scripts {
    fn new() -> Self {
        let load = |name| Script::new(&script_source(name).unwrap_or_default());
        Self {
            reserve: load("reserve"),
            reserve_many: load("reserve_many"),
            reserve_all: load("reserve_all"),
            rate_state: load("rate_state"),
            lease_acquire: load("lease_acquire"),
            lease_renew: load("lease_renew"),
            lease_release: load("lease_release"),
            lease_state: load("lease_state"),
            reset: load("reset"),
            policy: load("policy"),
            ban: load("ban"),
            list: load("list"),
        }
    }
}

/// The Redis engine (see the module docs).
pub struct RedisEngine {
    conn: Conn,
    /// Where the release subscription connects: the server, or each seed of
    /// a cluster in turn.
    subscribers: Arc<[redis::Client]>,
    next_subscriber: Arc<AtomicUsize>,
    cluster: bool,
    /// Replicas that must have a write before it is answered (`replica_acks`).
    replica_acks: u32,
    timeout: Duration,
    prefix: String,
    url: String,
    scripts: Scripts,
    releases: Arc<ReleaseHub>,
    listener: ReleaseListener,
    /// The store's `coalesce` setting.
    coalesce: bool,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Names this engine in errors.
const ENGINE: &str = "redis";

fn backend(e: redis::RedisError) -> BackendError {
    BackendError::new(ENGINE, e.to_string())
}

impl RedisEngine {
    /// Connects to the store `name` described by `config` (its `url` is required).
    pub async fn connect(name: &str, config: &StoreConfig) -> Result<Self, Error> {
        let (url, redacted) = config.connect_url();
        let connect_err = Error::connect(name, &redacted);
        if url.starts_with("rediss") {
            crate::tls::install_crypto_provider();
        }
        // The given CA replaces the web PKI roots: a private Redis is signed
        // by its own CA, and trusting public CAs besides would let any of
        // them vouch for it.
        let certs = match &config.tls_ca_file {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(
                    std::fs::read(path)
                        .map_err(|e| connect_err(format!("tls_ca_file {path}: {e}")))?,
                ),
            }),
            None => None,
        };
        let client_of = |url: &str| match &certs {
            Some(c) => redis::Client::build_with_tls(url, c.clone()),
            None => redis::Client::open(url),
        };
        let timeout = config.response_timeout();
        let cluster = cluster::is_cluster(&url);
        let (conn, subscribers) = if cluster {
            let seeds = cluster::seeds(&url).map_err(&connect_err)?;
            let mut builder = ClusterClientBuilder::new(seeds.clone())
                .response_timeout(timeout)
                .connection_timeout(config.connect_timeout())
                // A failed-over master: the replica is promoted after the
                // cluster's node timeout; retrying (with the client's
                // growing wait) rides that out within a few seconds.
                .retries(6);
            if url.starts_with("rediss") {
                builder = builder.tls(redis::cluster::TlsMode::Secure);
            }
            if let Some(c) = &certs {
                builder = builder.certs(c.clone());
            }
            let client = builder.build().map_err(|e| connect_err(e.to_string()))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let subscribers = seeds
                .iter()
                .map(|s| client_of(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| connect_err(e.to_string()))?;
            (Conn::Cluster(conn), subscribers)
        } else {
            let client = client_of(url.as_str()).map_err(|e| match &config.tls_ca_file {
                Some(path) => connect_err(format!("tls_ca_file {path}: {e}")),
                None => connect_err(e.to_string()),
            })?;
            let manager_config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(config.connect_timeout()))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(3);
            let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            (Conn::One(conn), vec![client])
        };
        Ok(Self {
            conn,
            subscribers: subscribers.into(),
            next_subscriber: Arc::new(AtomicUsize::new(0)),
            cluster,
            replica_acks: config.replica_acks.unwrap_or(u32::from(cluster)),
            timeout,
            prefix: config.prefix().to_string(),
            url: redacted,
            scripts: Scripts::new(),
            releases: Arc::new(ReleaseHub::new()),
            listener: ReleaseListener::default(),
            coalesce: config.coalesce(),
        })
    }

    /// Runs a call that writes state a grant depends on, answered once
    /// `replica_acks` replicas have it (see `durable.rs`).
    async fn durably<T: redis::FromRedisValue>(&self, call: Call<'_>) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        call.run(&mut conn, self.replica_acks, self.timeout / 2)
            .await
    }

    /// Runs a call that reads, or writes what a failover may forget safely.
    async fn run<T: redis::FromRedisValue>(&self, call: Call<'_>) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        call.run(&mut conn, 0, self.timeout / 2).await
    }

    /// A command for any one node (a cluster's: one at random), as text.
    async fn ask_any(&self, cmd: redis::Cmd) -> Result<String, BackendError> {
        match self.conn.clone() {
            Conn::One(mut c) => cmd.query_async(&mut c).await.map_err(backend),
            Conn::Cluster(mut c) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let value = c
                    .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await
                    .map_err(backend)?;
                redis::from_redis_value(value)
                    .map_err(|e| BackendError::new(ENGINE, format!("unexpected answer: {e}")))
            }
        }
    }

    fn rate_key(&self, ctx: &Ctx<'_>) -> String {
        format!("{}:{{{}}}:r", self.prefix, ctx.key.encoded())
    }

    /// A policy's allow or deny list.
    fn list_key(&self, ctx: &Ctx<'_>) -> String {
        format!("{}:{{{}}}:l", self.prefix, ctx.key.encoded())
    }

    /// A policy key's ban.
    fn ban_key(&self, ctx: &Ctx<'_>) -> String {
        format!("{}:{{{}}}:b", self.prefix, ctx.key.encoded())
    }

    /// A policy window's state, by [`WindowRule::state_name`]: a reloaded
    /// policy that changes a window's algorithm never reads a key of
    /// another type (which would fail the check, and under fail_open admit
    /// everything).
    fn window_key(&self, ctx: &Ctx<'_>, rule: &WindowRule) -> String {
        format!(
            "{}:{{{}}}:p:{}",
            self.prefix,
            ctx.key.encoded(),
            WindowRule::state_name(&rule.algorithm, rule.name, rule.window)
        )
    }

    fn lease_key(&self, ctx: &Ctx<'_>) -> String {
        format!("{}:{{{}}}:c", self.prefix, ctx.key.encoded())
    }

    /// The fences of released holders (see `lease_release.lua`).
    fn fence_key(&self, ctx: &Ctx<'_>) -> String {
        format!("{}:{{{}}}:f", self.prefix, ctx.key.encoded())
    }

    fn channel_prefix(&self) -> String {
        format!("{}:released:", self.prefix)
    }

    /// Starts the pattern subscription on first use (see [`ReleaseListener`]).
    async fn ensure_listener(&self) {
        let (clients, next) = (self.subscribers.clone(), self.next_subscriber.clone());
        let prefix = self.channel_prefix();
        self.listener
            .ensure("redis release subscription", &self.releases, move |l| {
                // Each (re)connection tries the next seed of a cluster.
                let client = clients[next.fetch_add(1, Ordering::Relaxed) % clients.len()].clone();
                listen(client, prefix.clone(), l)
            })
            .await;
    }
}

/// One PSUBSCRIBE on `{prefix}:released:*`, waking local waiters for each
/// release message until the connection ends.
async fn listen(client: redis::Client, channel_prefix: String, l: Listening) -> Result<(), String> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|e| format!("pub/sub connection: {e}"))?;
    pubsub
        .psubscribe(format!("{channel_prefix}*"))
        .await
        .map_err(|e| format!("PSUBSCRIBE: {e}"))?;
    if !l.started() {
        return Ok(());
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Some(h) = l.hub() else { return Ok(()) };
        if let Some(key) = msg.get_channel_name().strip_prefix(&channel_prefix) {
            h.notify(key);
        }
    }
    Ok(())
}

#[async_trait]
impl Engine for RedisEngine {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn atomic_batches(&self) -> bool {
        !self.cluster
    }

    async fn reserve_n(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError> {
        let (kind, p1, p2) = script_args(rate);
        let (granted, wait, slot): (i64, i64, i64) = self
            .durably(
                Call::new(&self.scripts.reserve)
                    .key(self.rate_key(&ctx))
                    .arg(kind)
                    .arg(p1)
                    .arg(p2)
                    .arg(max_wait_arg(max_wait))
                    .arg(cost),
            )
            .await?;
        Ok(Reservation::from_wire(granted == 1, wait, slot))
    }

    /// One key at once from 3 processes × 16 tasks: 196,960 decisions/s
    /// coalesced, 117,889 one script call each (docs/scaling.md).
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
        let mut call = Call::new(&self.scripts.reserve_many)
            .key(self.rate_key(&ctx))
            .arg(kind)
            .arg(p1)
            .arg(p2);
        for r in requests {
            call = call.arg(max_wait_arg(r.max_wait)).arg(r.cost);
        }
        let flat: Vec<i64> = self.durably(call).await?;
        Ok(flat
            .chunks_exact(3)
            .map(|r| Reservation::from_wire(r[0] == 1, r[1], r[2]))
            .collect())
    }

    async fn reserve_all(
        &self,
        items: &[(Ctx<'_>, RateSpec)],
        max_wait: Duration,
    ) -> Result<BatchReservation, BackendError> {
        if self.cluster {
            return Err(BackendError::new(
                "redis",
                "a Redis Cluster keeps each limiter key in its own slot, so check_all cannot decide several keys at once there; put limiters used together in check_all on a single-server Redis store",
            ));
        }
        let mut call = Call::new(&self.scripts.reserve_all).arg(max_wait_arg(max_wait));
        for (ctx, rate) in items {
            let (kind, p1, p2) = script_args(rate);
            call = call.key(self.rate_key(ctx)).arg(kind).arg(p1).arg(p2);
        }
        let (granted, wait, refused): (i64, i64, i64) = self.durably(call).await?;
        Ok(BatchReservation::from_wire(granted == 1, wait, refused))
    }

    fn runs_policies(&self) -> bool {
        true
    }

    async fn check_policy(
        &self,
        ctx: Ctx<'_>,
        check: &PolicyCheck<'_>,
    ) -> Result<PolicyOutcome, BackendError> {
        let mut call = Call::new(&self.scripts.policy)
            .key(self.ban_key(&ctx))
            .arg(check.cost)
            .arg(i32::from(check.shadow))
            .arg(i32::from(check.commit));
        for rule in check.rules {
            let args = policy_window_args(rule);
            call = call.key(self.window_key(&ctx, rule));
            for a in args {
                call = call.arg(a);
            }
        }
        let (ban, started, now, fits, states): (i64, i64, i64, Vec<i64>, Vec<Vec<i64>>) =
            if check.commit {
                self.durably(call).await?
            } else {
                self.run(call).await?
            };
        PolicyOutcome::from_wire(check.rules, ban, started == 1, now, &fits, &states)
            .map_err(|e| BackendError::new(ENGINE, e))
    }

    async fn set_ban(
        &self,
        ctx: Ctx<'_>,
        duration: Option<Duration>,
    ) -> Result<bool, BackendError> {
        let len = duration.map_or(-1, micros);
        let held: i64 = self
            .durably(
                Call::new(&self.scripts.ban)
                    .key(self.ban_key(&ctx))
                    .arg(len),
            )
            .await?;
        Ok(held == 1)
    }

    async fn list_change(
        &self,
        ctx: Ctx<'_>,
        change: ListChange<'_>,
    ) -> Result<bool, BackendError> {
        let call = Call::new(&self.scripts.list).key(self.list_key(&ctx));
        let call = match change {
            ListChange::Add { entry, ttl } => {
                call.arg("add").arg(entry).arg(ttl.map_or(-1, micros))
            }
            ListChange::Remove { entry } => call.arg("remove").arg(entry),
        };
        let changed: i64 = self.durably(call).await?;
        Ok(changed == 1)
    }

    async fn list_read(&self, ctx: Ctx<'_>) -> Result<Vec<ListEntry>, BackendError> {
        let (now, flat): (i64, Vec<String>) = self
            .run(
                Call::new(&self.scripts.list)
                    .key(self.list_key(&ctx))
                    .arg("read"),
            )
            .await?;
        Ok(flat
            .chunks(2)
            .filter_map(|p| {
                let exp: f64 = p.get(1)?.parse().ok()?;
                let exp = exp as i64;
                (exp == 0 || exp > now).then(|| ListEntry {
                    entry: p[0].clone(),
                    left: (exp > 0).then(|| crate::units::from_micros(exp - now)),
                })
            })
            .collect())
    }

    async fn rate_state(&self, ctx: Ctx<'_>, rate: &RateSpec) -> Result<RateState, BackendError> {
        let r: Vec<i64> = self
            .run(
                Call::new(&self.scripts.rate_state)
                    .key(self.rate_key(&ctx))
                    .arg(RateArgs::of(rate).kind()),
            )
            .await?;
        let (&now, rest) = r
            .split_first()
            .ok_or_else(|| BackendError::new("redis", "empty reply to rate_state"))?;
        // A bucket answers its TAT, a window its grants.
        let tat = rest.first().copied().unwrap_or(0);
        Ok(RateState::from_wire(rate, now, tat, rest))
    }

    async fn acquire_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError> {
        let r: (i64, i64) = self
            .durably(
                Call::new(&self.scripts.lease_acquire)
                    .key(self.lease_key(&ctx))
                    .key(self.fence_key(&ctx))
                    .arg(holder.as_str())
                    .arg(micros(spec.lease))
                    .arg(spec.max),
            )
            .await?;
        Ok(LeaseOutcome::from_wire(r.0 == 1, r.1))
    }

    async fn renew_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        let kept: i64 = self
            .durably(
                Call::new(&self.scripts.lease_renew)
                    .key(self.lease_key(&ctx))
                    .arg(holder.as_str())
                    .arg(micros(lease)),
            )
            .await?;
        Ok(kept == 1)
    }

    async fn release_lease(&self, ctx: Ctx<'_>, holder: &HolderId) -> Result<bool, BackendError> {
        // A release a failover forgets leaves the slot held until its lease
        // ends: it admits less, never more, so it does not wait for replicas.
        let removed: i64 = self
            .run(
                Call::new(&self.scripts.lease_release)
                    .key(self.lease_key(&ctx))
                    .key(self.fence_key(&ctx))
                    .arg(holder.as_str())
                    .arg(format!("{}{}", self.channel_prefix(), ctx.key.encoded()))
                    .arg(crate::lease::FENCE_NS / 1000),
            )
            .await?;
        Ok(removed == 1)
    }

    async fn lease_state(
        &self,
        ctx: Ctx<'_>,
        spec: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError> {
        let (now, holders, first): (i64, i64, i64) = self
            .run(Call::new(&self.scripts.lease_state).key(self.lease_key(&ctx)))
            .await?;
        Ok(ConcurrencyState::from_wire(spec.max, now, holders, first))
    }

    /// The server, its version and mode; with `replica_acks`, the replicas
    /// each master has, failing when one has fewer (every decision on its
    /// keys would fail).
    async fn describe(&self) -> Result<String, BackendError> {
        let info = self
            .ask_any(redis::cmd("INFO").arg("server").clone())
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let masters = if self.cluster {
            let nodes = self
                .ask_any(redis::cmd("CLUSTER").arg("NODES").clone())
                .await?;
            cluster::masters(&nodes)
        } else if self.replica_acks > 0 {
            let repl = self
                .ask_any(redis::cmd("INFO").arg("replication").clone())
                .await?;
            let replicas = repl
                .lines()
                .find_map(|l| l.strip_prefix("connected_slaves:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            vec![cluster::Master {
                addr: "the server".to_string(),
                replicas,
                failing: false,
            }]
        } else {
            Vec::new()
        };
        if let Some(m) = masters.iter().find(|m| m.failing) {
            return Err(BackendError::new(
                ENGINE,
                format!(
                    "master {} is failing: its keys have no master until the cluster promotes a replica",
                    m.addr
                ),
            ));
        }
        if let Some(m) = masters.iter().find(|m| m.replicas < self.replica_acks) {
            return Err(BackendError::new(
                ENGINE,
                format!(
                    "{} has {} live replica(s) but replica_acks = {}: every decision on its keys would fail; add a replica, or set replica_acks = 0 to answer without one",
                    m.addr, m.replicas, self.replica_acks
                ),
            ));
        }
        let replicas = match masters.as_slice() {
            [] => String::new(),
            r => format!(
                ", {} with {} replica(s) (replica_acks {})",
                if self.cluster {
                    format!("{} masters", r.len())
                } else {
                    "one server".to_string()
                },
                r.iter()
                    .map(|m| m.replicas.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.replica_acks
            ),
        };
        Ok(format!(
            "Redis {}{}{replicas}, keys under `{}:`",
            field("redis_version:").unwrap_or_else(|| "(version unknown)".into()),
            field("redis_mode:")
                .filter(|m| m != "standalone")
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            self.prefix
        ))
    }

    async fn reset(&self, ctx: Ctx<'_>) -> Result<u64, BackendError> {
        let n: i64 = self
            .run(
                Call::new(&self.scripts.reset)
                    .key(self.rate_key(&ctx))
                    .key(self.lease_key(&ctx))
                    .arg(format!("{}{}", self.channel_prefix(), ctx.key.encoded())),
            )
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn subscribe_releases(&self, ctx: Ctx<'_>) -> Result<ReleaseSignal, BackendError> {
        // Subscribe locally first: a release after this point is never lost.
        let signal = self.releases.subscribe(ctx.key.encoded());
        self.ensure_listener().await;
        Ok(signal)
    }
}

/// Redis engine settings: a `redis://`, `rediss://` or `unix://` url, and a
/// CA file only with TLS.
pub(crate) fn check_settings(store: &StoreConfig) -> Result<(), SettingError> {
    let url = store.required_url("url = \"redis://127.0.0.1:6379/0\"")?;
    if ![
        "redis://",
        "rediss://",
        "redis+unix://",
        "unix://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|s| url.starts_with(s))
    {
        return Err((
            "url",
            format!(
                "must start with redis://, rediss:// (TLS), unix:// or, for a Redis Cluster, redis+cluster:// (rediss+cluster:// with TLS), got {:?}",
                redact(url)
            ),
        ));
    }
    if cluster::is_cluster(url) {
        cluster::seeds(url).map_err(|m| ("url", format!("{m}, got {:?}", redact(url))))?;
    }
    if store.tls_ca_file.is_some() && !url.starts_with("rediss") {
        return Err((
            "tls_ca_file",
            format!(
                "is for TLS connections, and this url is not one: use rediss:// (or rediss+cluster://), got {:?}",
                redact(url)
            ),
        ));
    }
    Ok(())
}

/// Redis computes in whole microseconds: faster token buckets are refused.
pub(crate) fn check_limiter(spec: &LimiterSpec, store: &StoreConfig) -> Result<(), SettingError> {
    super::check_microsecond_rate(spec, store)
}
