//! The NATS JetStream KV engine: state in a key-value bucket, changed by compare-and-set on revisions.
//!
//! Each decision reads a key's entry (value and revision), computes the new
//! state in Rust with the shared math ([`crate::gcra`], [`crate::window`],
//! [`crate::lease`]) and writes it with `update(key, value, revision)`; a
//! write that lost the race (`WrongLastRevision`) is counted in
//! `cas_failures` and retried after a jittered backoff, up to
//! `max_cas_retries`, after which the decision fails and follows
//! `on_backend_error`. Revision 0 means "absent", so creating a key is the
//! same call.
//!
//! Hot keys: naive CAS collapses (docs/design.md, Engine notes: 16 tasks on one
//! key: about 90% of attempts conflict). So at most one decision per key is
//! in flight from a process (`KeyStripes`, src/engine/stripes.rs), and the value and revision this
//! process last wrote are cached: the next decision tries its update on them
//! without reading first, one round trip when nobody else wrote meanwhile.
//! A decision that would write nothing (a refusal) is always re-checked on a
//! fresh read, so a stale cache can never refuse wrongly.
//!
//! Time: KV has no clock API; see [`clock`] for how server timestamps bound
//! "now" from below, which makes host clock skew harmless.
//!
//! Layout: keys are `<prefix>.r.<key>` (rate) and `<prefix>.c.<key>`
//! (leases), where `<key>` is the encoded state key with `.` written as `/`
//! (both allowed in KV keys, so the mapping stays injective and no token is
//! empty). Values use the versioned binary layout of [`state`]. The bucket is
//! created at connect if absent, as the `KV_<bucket>` stream with the KV
//! settings (so it works on nats-server 2.9 as well as current releases),
//! with history 1 and `max_age_seconds`, so idle keys vanish.
//!
//! Releases wake waiters through one KV watch per engine on
//! `<prefix>.c.>`: an update that leaves a key with fewer leases wakes the
//! local waiters of that key; a 500 ms poll in the limiter is the fallback.

mod bucket;
pub mod clock;
mod settings;
pub mod state;
mod watch;

pub(crate) use settings::{check_limiter, check_settings};
pub use settings::{MAX_CONCURRENT, MAX_WINDOW_LIMIT};

use super::stripes::KeyStripes;
use super::{
    within, AbortOnDrop, BatchReservation, ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome,
    ListChange, ListEntry, PolicyCheck, PolicyOutcome, RateRequest, RateState, ReleaseHub,
    ReleaseListener, ReleaseSignal, Reservation,
};
use crate::config::store::StoreConfig;
use crate::policy::{decide as policy, PolicySpec};
use crate::quota::{ConcurrencySpec, RateSpec};
use crate::units::nanos;

use crate::error::{BackendError, Error};
use crate::lease;
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bucket::open_bucket;
use clock::ServerClock;
use rand::Rng;
use state::State;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Names this engine in errors.
const ENGINE: &str = "nats";

/// How often the server clock is probed again (see [`clock`]).
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Cached (revision, state) pairs kept at most; the cache is cleared when full.
pub(super) const CACHE_MAX: usize = 10_000;

/// Compare-and-set counters of one engine, for tests and benches.
#[derive(Debug, Default)]
pub struct CasStats {
    attempts: AtomicU64,
    conflicts: AtomicU64,
    writes: AtomicU64,
}

/// A snapshot of [`CasStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CasCounts {
    /// Updates sent.
    pub attempts: u64,
    /// Updates the server refused with `WrongLastRevision`.
    pub conflicts: u64,
    /// Updates the server stored.
    pub writes: u64,
}

/// The NATS JetStream KV engine (see the module docs).
pub struct NatsEngine {
    kv: kv::Store,
    prefix: String,
    url: String,
    /// The server's version, as it said at connect.
    server_version: String,
    timeout: Duration,
    max_retries: u32,
    /// How long the bucket keeps an untouched key.
    max_age: Duration,
    clock: Arc<ServerClock>,
    stripes: KeyStripes,
    cache: Mutex<HashMap<String, (u64, State)>>,
    stats: CasStats,
    releases: Arc<ReleaseHub>,
    listener: ReleaseListener,
    /// The store's `coalesce` setting.
    coalesce: bool,
    _prober: AbortOnDrop,
}

impl std::fmt::Debug for NatsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEngine")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> BackendError {
    BackendError::new(ENGINE, e.to_string())
}

fn created_ns(entry: &kv::Entry) -> i64 {
    i64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or(0)
}

/// What a decision does with the state it was given.
enum Step<T> {
    /// Nothing to store; answer `T`.
    Keep(T),
    /// Store the new state, then answer `T`.
    Write(State, T),
}

impl NatsEngine {
    /// Connects to the store `name` described by `config` (its `url` is
    /// required), creating the bucket if absent and probing the server clock.
    pub async fn connect(name: &str, config: &StoreConfig) -> Result<Self, Error> {
        let (url, redacted) = config.connect_url();
        let connect_err = Error::connect(name, &redacted);
        let timeout = config.response_timeout();
        let setup = config.connect_timeout();
        let mut options = async_nats::ConnectOptions::new()
            .name("ratesync")
            // Retry soon after an outage: the default backoff grows to seconds.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(4)).min(500))
            })
            .connection_timeout(setup)
            // Decisions are bounded by `response_timeout` where they are
            // made (`within`); this bound is for set-up, such as creating the
            // bucket on a server that has just started.
            .request_timeout(Some(setup));
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| connect_err(format!("credentials_file {path}: {e}")))?;
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.into()).require_tls(true);
        }
        let client = options
            .connect(url.as_str())
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let server_version = client.server_info().version;
        let js = jetstream::new(client);
        let kv = open_bucket(&js, config.bucket(), config.max_age())
            .await
            .map_err(&connect_err)?;
        let clock = Arc::new(ServerClock::new(
            config
                .clock_offset_ms
                .unwrap_or(0)
                .saturating_mul(1_000_000),
        ));
        let probe_key = format!(
            "{}.clock.{}",
            config.prefix(),
            HolderId::new().as_str().replace('.', "/")
        );
        for _ in 0..3 {
            match tokio::time::timeout(setup, probe(&kv, &probe_key, &clock)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(connect_err(format!("probing the server clock: {e}"))),
                Err(_) => {
                    return Err(connect_err(format!(
                        "probing the server clock: no answer within {:.1} s (connect_timeout)",
                        setup.as_secs_f64()
                    )))
                }
            }
        }
        let prober = {
            let (kv, clock) = (kv.clone(), clock.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PROBE_EVERY).await;
                    if let Err(e) = within(ENGINE, timeout, probe(&kv, &probe_key, &clock)).await {
                        tracing::debug!(error = %e, "nats clock probe failed; keeping the last estimate");
                    }
                }
            }))
        };
        tracing::debug!(
            offset_ns = clock.offset_ns(),
            uncertainty = ?clock.uncertainty(),
            "nats server clock probed"
        );
        Ok(Self {
            kv,
            prefix: config.prefix().to_string(),
            url: redacted,
            server_version,
            timeout,
            max_retries: config.max_cas_retries(),
            max_age: config.max_age(),
            clock,
            stripes: KeyStripes::new(),
            cache: Mutex::new(HashMap::new()),
            stats: CasStats::default(),
            releases: Arc::new(ReleaseHub::new()),
            listener: ReleaseListener::default(),
            coalesce: config.coalesce(),
            _prober: prober,
        })
    }

    /// This engine's compare-and-set counters so far.
    pub fn cas_counts(&self) -> CasCounts {
        CasCounts {
            attempts: self.stats.attempts.load(Ordering::Relaxed),
            conflicts: self.stats.conflicts.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// The engine's server clock (see [`clock`]).
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    fn key(&self, kind: &str, ctx: &Ctx<'_>) -> String {
        format!(
            "{}.{kind}.{}",
            self.prefix,
            ctx.key.encoded().replace('.', "/")
        )
    }

    /// The key's revision (0: absent), state and server stamp, read fresh.
    async fn read(&self, key: &str) -> Result<(u64, State, Option<u64>), BackendError> {
        let entry = within(ENGINE, self.timeout, async {
            self.kv.entry(key).await.map_err(backend)
        })
        .await?;
        Ok(match entry {
            None => (0, State::Empty, None),
            Some(e) => {
                let created = u64::try_from(created_ns(&e)).ok();
                let state = match e.operation {
                    kv::Operation::Put => State::decode(&e.value)
                        .map_err(|err| backend(format!("key {key}: {err}")))?,
                    _ => State::Empty,
                };
                (e.revision, state, created)
            }
        })
    }

    fn cached(&self, key: &str) -> Option<(u64, State)> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, key: &str, entry: Option<(u64, State)>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match entry {
            Some(e) => {
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key.to_string(), e);
            }
            None => {
                cache.remove(key);
            }
        }
    }

    /// One decision on `key`: `decide(state, now_ns)` until its write is
    /// stored or the retries run out (see the module docs).
    async fn decide<T>(
        &self,
        ctx: &Ctx<'_>,
        key: &str,
        mut decide: impl FnMut(State, u64) -> Step<T>,
    ) -> Result<T, BackendError> {
        let _turn = within(ENGINE, self.timeout, async {
            Ok(self.stripes.turn(&[key]).await)
        })
        .await?;
        let mut known = self.cached(key);
        let mut conflicts = 0u32;
        let result = loop {
            let (revision, state, created, from_cache) = match known.take() {
                Some((rev, state)) => (rev, state, None, true),
                None => {
                    let (rev, state, created) = self.read(key).await?;
                    (rev, state, created, false)
                }
            };
            let now = match created {
                Some(c) => self.clock.now_at_least(c),
                None => self.clock.now_ns(),
            };
            match decide(state, now) {
                Step::Keep(out) if !from_cache => break Ok(out),
                Step::Keep(_) => continue, // decided on what this process last wrote: check afresh
                Step::Write(new, out) => {
                    self.stats.attempts.fetch_add(1, Ordering::Relaxed);
                    let bytes = new.encode();
                    let sent = within(ENGINE, self.timeout, async {
                        Ok(self.kv.update(key, bytes.into(), revision).await)
                    })
                    .await;
                    match sent {
                        Ok(Ok(rev)) => {
                            self.stats.writes.fetch_add(1, Ordering::Relaxed);
                            self.remember(key, Some((rev, new)));
                            break Ok(out);
                        }
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            // Counted at once, in both places, so a decision
                            // abandoned mid-retry leaves the two in step.
                            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                            ctx.metrics.record_cas_failures(1);
                            self.remember(key, None);
                            conflicts += 1;
                            if conflicts >= self.max_retries {
                                break Err(BackendError {
                                    engine: ENGINE,
                                    message: format!(
                                        "{conflicts} compare-and-set conflicts in a row on key {key}; raise max_cas_retries or spread the load over more keys"
                                    ),
                                    cas_exhausted: true,
                                });
                            }
                            // Jittered, growing backoff so the contenders spread out.
                            let cap = 200u64 << conflicts.min(6);
                            let pause = rand::thread_rng().gen_range(0..cap);
                            tokio::time::sleep(Duration::from_micros(pause)).await;
                        }
                        Ok(Err(e)) => {
                            self.remember(key, None);
                            break Err(backend(e));
                        }
                        Err(e) => {
                            self.remember(key, None);
                            break Err(e);
                        }
                    }
                }
            }
        };
        result
    }

    /// Starts the KV watch on first use (see [`ReleaseListener`]).
    async fn ensure_listener(&self) {
        let (kv, pattern) = (self.kv.clone(), format!("{}.c.>", self.prefix));
        self.listener
            .ensure("nats KV watch", &self.releases, move |l| {
                watch::listen(kv.clone(), pattern.clone(), l)
            })
            .await;
    }
}

/// Writes the probe key and reads back the server's stamp on it.
async fn probe(kv: &kv::Store, key: &str, clock: &ServerClock) -> Result<(), BackendError> {
    let t0 = clock.local_ns();
    kv.put(key, Vec::new().into()).await.map_err(backend)?;
    let t1 = clock.local_ns();
    let entry = kv
        .entry(key)
        .await
        .map_err(backend)?
        .ok_or_else(|| backend("the clock probe key vanished"))?;
    clock.record_probe(t0, t1, created_ns(&entry));
    Ok(())
}

#[async_trait]
impl Engine for NatsEngine {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn atomic_batches(&self) -> bool {
        false
    }

    /// A key is forgotten `max_age` after its last write, so a slot reserved
    /// now must have stopped mattering by then: its wait plus the state's
    /// lifetime fits the age, less the clock's uncertainty and a second.
    fn reservation_horizon(&self, rate: &RateSpec) -> Option<Duration> {
        let margin =
            self.clock.uncertainty().unwrap_or(Duration::from_secs(1)) + Duration::from_secs(1);
        Some(
            self.max_age
                .saturating_sub(rate.state_lifetime())
                .saturating_sub(margin),
        )
    }

    async fn reserve_n(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError> {
        // A batch of one: the same compare-and-set, decided the same way.
        let mut answers = self
            .reserve_many(ctx, rate, &[RateRequest { cost, max_wait }])
            .await?;
        answers
            .pop()
            .ok_or_else(|| backend("no answer to a request of one"))
    }

    fn coalesces(&self) -> bool {
        self.coalesce
    }

    /// One compare-and-set for the whole batch: the requests are decided in
    /// order on one reading of the state, and a conflict decides them all
    /// again on the state that won.
    async fn reserve_many(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        requests: &[RateRequest],
    ) -> Result<Vec<Reservation>, BackendError> {
        let key = self.key("r", &ctx);
        // Never beyond the horizon, whoever calls (the limiter already
        // keeps to it; this guards direct callers of the engine).
        let horizon = self.reservation_horizon(rate);
        let bounds: Vec<(u32, u64)> = requests
            .iter()
            .map(|r| (r.cost, nanos(r.max_wait.min(horizon.unwrap_or(r.max_wait)))))
            .collect();
        let rate = *rate;
        self.decide(&ctx, &key, move |state, now| {
            let mut cell = state.into_cell();
            let mut granted_any = false;
            let outcomes = bounds
                .iter()
                .map(|&(cost, max_wait)| {
                    let out = rate.measure_and_replace(&mut cell, now, cost, max_wait, true);
                    granted_any |= out.is_ok();
                    Reservation::of_decision(out, |wait_ns| (now + wait_ns) / 1000)
                })
                .collect();
            if granted_any {
                Step::Write(State::of_cell(&rate, cell), outcomes)
            } else {
                Step::Keep(outcomes)
            }
        })
        .await
    }

    async fn reserve_all(
        &self,
        _items: &[(Ctx<'_>, RateSpec)],
        _max_wait: Duration,
    ) -> Result<BatchReservation, BackendError> {
        Err(backend(
            "NATS KV has no multi-key compare-and-set, so check_all is not available on this engine",
        ))
    }

    async fn rate_state(&self, ctx: Ctx<'_>, rate: &RateSpec) -> Result<RateState, BackendError> {
        let key = self.key("r", &ctx);
        let (_, state, created) = self.read(&key).await?;
        let now = created.map_or(self.clock.now_ns(), |c| self.clock.now_at_least(c));
        Ok(RateState::of_cell(rate, &state.into_cell(), now))
    }

    async fn acquire_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError> {
        let key = self.key("c", &ctx);
        let (ttl, max) = (nanos(spec.lease), spec.max);
        self.decide(&ctx, &key, |state, now| {
            let mut leases = state.into_leases();
            match lease::acquire(&mut leases, holder.as_str(), now, ttl, max) {
                lease::Acquire::Acquired { holders } => {
                    Step::Write(State::Leases { leases }, LeaseOutcome::Acquired { holders })
                }
                lease::Acquire::Full { retry_after_ns } => Step::Keep(LeaseOutcome::Full {
                    retry_after: Duration::from_nanos(retry_after_ns),
                }),
            }
        })
        .await
    }

    async fn renew_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        lease_for: Duration,
    ) -> Result<bool, BackendError> {
        let key = self.key("c", &ctx);
        let ttl = nanos(lease_for);
        self.decide(&ctx, &key, |state, now| {
            let mut leases = state.into_leases();
            if lease::renew(&mut leases, holder.as_str(), now, ttl) {
                Step::Write(State::Leases { leases }, true)
            } else {
                Step::Keep(false)
            }
        })
        .await
    }

    async fn release_lease(&self, ctx: Ctx<'_>, holder: &HolderId) -> Result<bool, BackendError> {
        let key = self.key("c", &ctx);
        // Always a write: freeing a slot, or fencing a holder that held
        // none, so an acquire of it still on its way fails its compare-and-set.
        self.decide(&ctx, &key, |state, now| {
            let mut leases = state.into_leases();
            let released = lease::release(&mut leases, holder.as_str(), now);
            Step::Write(State::Leases { leases }, released)
        })
        .await
    }

    async fn lease_state(
        &self,
        ctx: Ctx<'_>,
        spec: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError> {
        let key = self.key("c", &ctx);
        let (_, state, created) = self.read(&key).await?;
        let now = created.map_or(self.clock.now_ns(), |c| self.clock.now_at_least(c));
        let mut leases = state.into_leases();
        lease::expire(&mut leases, now);
        Ok(ConcurrencyState {
            holders: lease::holders(&leases).count() as u32,
            max: spec.max,
            next_expiry: lease::holders(&leases)
                .map(|l| l.expires_at)
                .min()
                .map(|e| Duration::from_nanos(e.saturating_sub(now))),
        })
    }

    async fn describe(&self) -> Result<String, BackendError> {
        let status = within(ENGINE, self.timeout, async {
            self.kv.status().await.map_err(backend)
        })
        .await?;
        Ok(format!(
            "NATS {}, bucket `{}` ({} keys, max age {:.0} s)",
            self.server_version,
            self.kv.name,
            status.values(),
            self.max_age.as_secs_f64()
        ))
    }

    fn runs_policies(&self) -> bool {
        true
    }

    fn check_policy_spec(&self, spec: &PolicySpec) -> Result<(), String> {
        settings::check_policy(spec, self.max_age)
    }

    /// One compare-and-set: the ban and every window of the key live in
    /// one value, decided in Rust ([`crate::policy::decide`]) on the state
    /// that won.
    async fn check_policy(
        &self,
        ctx: Ctx<'_>,
        check: &PolicyCheck<'_>,
    ) -> Result<PolicyOutcome, BackendError> {
        let key = self.key("p", &ctx);
        let check = *check;
        self.decide(&ctx, &key, move |state, now| {
            let mut cell = state.into_policy();
            let before = cell.clone();
            let out =
                policy::measure_and_replace(check.rules, &mut cell, now, check.cost, check.shadow)
                    .at(now / 1000);
            if check.commit && cell != before && (out.counted || out.ban_started) {
                Step::Write(State::Policy(cell), out)
            } else {
                Step::Keep(out)
            }
        })
        .await
    }

    async fn set_ban(
        &self,
        ctx: Ctx<'_>,
        duration: Option<Duration>,
    ) -> Result<bool, BackendError> {
        let key = self.key("p", &ctx);
        self.decide(&ctx, &key, move |state, now| {
            let mut cell = state.into_policy();
            let held = cell.banned_until > now;
            match duration {
                Some(d) => cell.banned_until = cell.banned_until.max(now.saturating_add(nanos(d))),
                None if held => cell.banned_until = 0,
                None => return Step::Keep(false),
            }
            Step::Write(State::Policy(cell), held)
        })
        .await
    }

    async fn list_change(
        &self,
        ctx: Ctx<'_>,
        change: ListChange<'_>,
    ) -> Result<bool, BackendError> {
        let key = self.key("l", &ctx);
        self.decide(&ctx, &key, move |state, now| {
            let mut list = state.into_list();
            let before = list.clone();
            list.retain(|_, &mut exp| exp == 0 || exp > now);
            let changed = match change {
                ListChange::Add { entry, ttl } => {
                    let exp = ttl.map_or(0, |t| now.saturating_add(nanos(t)).max(1));
                    list.insert(entry.to_string(), exp) != Some(exp)
                }
                ListChange::Remove { entry } => list.remove(entry).is_some(),
            };
            if list == before {
                Step::Keep(changed)
            } else {
                Step::Write(State::List(list), changed)
            }
        })
        .await
    }

    async fn list_read(&self, ctx: Ctx<'_>) -> Result<Vec<ListEntry>, BackendError> {
        let key = self.key("l", &ctx);
        let (_, state, created) = self.read(&key).await?;
        let now = created.map_or(self.clock.now_ns(), |c| self.clock.now_at_least(c));
        // A bucket forgets a key untouched for max_age; a list is
        // configuration and must not vanish, so a reader writes it afresh
        // once it is half that old.
        let stale = created.is_some_and(|c| now.saturating_sub(c) > nanos(self.max_age) / 2);
        if stale && state != State::Empty {
            self.decide(&ctx, &key, |state, _| match state {
                State::Empty => Step::Keep(()),
                other => Step::Write(other, ()),
            })
            .await?;
        }
        Ok(state
            .into_list()
            .into_iter()
            .filter(|&(_, exp)| exp == 0 || exp > now)
            .map(|(entry, exp)| ListEntry {
                entry,
                left: (exp > 0).then(|| Duration::from_nanos(exp - now)),
            })
            .collect())
    }

    async fn reset(&self, ctx: Ctx<'_>) -> Result<u64, BackendError> {
        let mut deleted = 0;
        for kind in ["r", "c"] {
            let key = self.key(kind, &ctx);
            // This process's turn on the key, bounded like a decision's.
            let _turn = within(ENGINE, self.timeout, async {
                Ok(self.stripes.turn(&[key.as_str()]).await)
            })
            .await?;
            self.remember(&key, None);
            if self.read(&key).await?.1 == State::Empty {
                continue;
            }
            // A delete marker is a new revision: writers holding the old
            // one conflict and read afresh; the watch wakes the waiters.
            within(ENGINE, self.timeout, async {
                self.kv.delete(&key).await.map_err(backend)
            })
            .await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    async fn subscribe_releases(&self, ctx: Ctx<'_>) -> Result<ReleaseSignal, BackendError> {
        // Subscribe locally first: a release after this point is never lost.
        let signal = self.releases.subscribe(&self.key("c", &ctx));
        self.ensure_listener().await;
        Ok(signal)
    }
}
