//! The in-memory engine: limiter state in this process, the embedded default.
//!
//! State lives in a fixed number of shards, each a small mutex-protected map,
//! so concurrent decisions on different keys rarely meet and no global lock
//! sits on the hot path. A decision holds its shard's lock for a few hundred
//! nanoseconds and never across an `.await`.
//!
//! The clock is [`tokio::time::Instant`], so limiters run on paused tokio time
//! in tests (`#[tokio::test(start_paused = true)]`) and behave exactly as on
//! a real clock.
//!
//! Idle keys (a full bucket, an empty window, no holders) are dropped by an
//! amortised sweep of their shard, so per-IP or per-user limiters do not grow
//! without bound.

use super::{
    BatchReservation, ConcurrencyState, Ctx, Engine, HolderId, LeaseOutcome, ListChange, ListEntry,
    PolicyCheck, PolicyOutcome, RateState, ReleaseHub, ReleaseSignal, Reservation,
};
use crate::config::store::{SettingError, StoreConfig};
use crate::policy::decide::{self as policy, PolicyCell};
use crate::quota::{ConcurrencySpec, RateCell, RateSpec};

use crate::error::BackendError;
use crate::key::StateKey;
use crate::lease::{self, Lease};
use crate::units::{from_nanos, nanos};
use async_trait::async_trait;
use hashbrown::HashTable;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

const SHARDS: usize = 64;
/// A shard is swept when it has grown to this many keys since its last sweep.
const MIN_SWEEP_LEN: usize = 64;

/// The state of one key. A key carries at most one rate state and one set of leases.
#[derive(Debug, Default)]
struct Entry {
    /// The rate limit's state.
    rate: RateCell,
    /// Concurrency: current holders.
    leases: Vec<Lease>,
    /// A policy's state for this key: its ban and windows (boxed: most
    /// keys are a limiter's).
    policy: Option<Box<PolicyCell>>,
    /// A policy's allow or deny list: entry -> expiry (engine ns; 0: never).
    list: Option<std::collections::BTreeMap<String, u64>>,
    /// When this entry holds nothing any more and may be dropped.
    idle_at: u64,
}

#[derive(Debug)]
struct Shard {
    /// The entries, each stored with its key and the key's hash, so a
    /// decision hashes its key once (for the shard and the table both).
    map: HashTable<Item>,
    sweep_at: usize,
}

#[derive(Debug)]
struct Item {
    hash: u64,
    key: Arc<str>,
    entry: Entry,
}

/// The in-memory engine (see the module docs).
#[derive(Debug)]
pub struct MemoryEngine {
    shards: Box<[Mutex<Shard>]>,
    epoch: Instant,
    /// The wall clock at `epoch`, in Unix microseconds: slot times are
    /// reported on it, as the network engines report their server's.
    epoch_unix_us: u64,
    releases: ReleaseHub,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashTable::new(),
                        sweep_at: MIN_SWEEP_LEN,
                    })
                })
                .collect(),
            epoch: Instant::now(),
            epoch_unix_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            releases: ReleaseHub::new(),
        }
    }

    /// Nanoseconds since the engine was made. Starts at 1 so that 0 can mean "no state".
    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed()) + 1
    }

    /// The Unix time (µs) of `ns` on this engine's clock.
    fn unix_us_at(&self, ns: u64) -> u64 {
        self.epoch_unix_us.saturating_add(ns / 1000)
    }

    /// The shard of a key: bits 32..38 of its hash ([`StateKey::hash`],
    /// keyed SipHash), which the shard's table uses neither for its buckets
    /// (the low bits) nor for its tags (the top 7).
    fn shard_index(k: &StateKey) -> usize {
        ((k.hash() >> 32) as usize) % SHARDS
    }

    fn shard(&self, k: &StateKey) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave an entry half-written
        // (every update is a plain store), so a poisoned lock is still sound.
        self.shards[Self::shard_index(k)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One rate decision on `ctx.key`, in this process (see [`Engine::reserve_n`]).
    fn decide(&self, ctx: Ctx<'_>, rate: &RateSpec, cost: u32, max_wait: Duration) -> Reservation {
        let now = self.now();
        let out = {
            let mut shard = self.shard(ctx.key);
            let entry = shard.entry(ctx.key, now);
            let out = rate.measure_and_replace(&mut entry.rate, now, cost, nanos(max_wait), true);
            entry.refresh_idle(Some(rate), now);
            out
        };
        Reservation::of_decision(out, |wait| self.unix_us_at(now + wait))
    }

    /// One policy check on `ctx.key`, in this process (see [`Engine::check_policy`]).
    fn decide_policy(&self, ctx: Ctx<'_>, check: &PolicyCheck<'_>) -> PolicyOutcome {
        let now = self.now();
        let mut shard = self.shard(ctx.key);
        if !check.commit {
            let mut cell = shard
                .get(ctx.key)
                .and_then(|e| e.policy.as_deref().cloned())
                .unwrap_or_default();
            let out =
                policy::measure_and_replace(check.rules, &mut cell, now, check.cost, check.shadow);
            return out.at(self.unix_us_at(now));
        }
        let entry = shard.entry(ctx.key, now);
        let cell = entry.policy.get_or_insert_with(Box::default);
        let out = policy::measure_and_replace(check.rules, cell, now, check.cost, check.shadow);
        let keep = policy::idle_after_ns(check.rules, cell, now);
        entry.keep_for(keep, now);
        out.at(self.unix_us_at(now))
    }

    /// Keys currently held (idle ones may linger until their shard is swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle key now (normally done lazily as shards grow).
    pub fn sweep(&self) {
        let now = self.now();
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            s.map.retain(|i| i.entry.idle_at > now);
            s.sweep_at = (s.map.len() * 2).max(MIN_SWEEP_LEN);
        }
    }
}

impl Shard {
    fn get(&self, k: &StateKey) -> Option<&Entry> {
        self.map
            .find(k.hash(), |i| &*i.key == k.encoded())
            .map(|i| &i.entry)
    }

    fn get_mut(&mut self, k: &StateKey) -> Option<&mut Entry> {
        self.map
            .find_mut(k.hash(), |i| &*i.key == k.encoded())
            .map(|i| &mut i.entry)
    }

    fn remove(&mut self, k: &StateKey) -> Option<Entry> {
        let found = self
            .map
            .find_entry(k.hash(), |i| &*i.key == k.encoded())
            .ok()?;
        Some(found.remove().0.entry)
    }

    fn entry(&mut self, k: &StateKey, now: u64) -> &mut Entry {
        if self.map.len() >= self.sweep_at && self.get(k).is_none() {
            self.map.retain(|i| i.entry.idle_at > now);
            self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP_LEN);
        }
        let item = self
            .map
            .entry(k.hash(), |i| &*i.key == k.encoded(), |i| i.hash)
            .or_insert_with(|| Item {
                hash: k.hash(),
                key: k.encoded().into(),
                entry: Entry::default(),
            });
        &mut item.into_mut().entry
    }
}

impl Entry {
    fn refresh_idle(&mut self, rate: Option<&RateSpec>, now: u64) {
        let rate_idle = rate.map_or(0, |r| r.idle_after_ns(&self.rate, now));
        let lease_idle = lease::idle_after_ns(&self.leases, now);
        self.keep_for(rate_idle.max(lease_idle), now);
    }

    /// Keeps the entry at least `keep_ns` past `now`. Never shortens:
    /// another limit on the same key may need longer.
    fn keep_for(&mut self, keep_ns: u64, now: u64) {
        self.idle_at = self.idle_at.max(now.saturating_add(keep_ns));
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn reserve_n(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Result<Reservation, BackendError> {
        Ok(self.decide(ctx, rate, cost, max_wait))
    }

    fn reserve_n_now(
        &self,
        ctx: Ctx<'_>,
        rate: &RateSpec,
        cost: u32,
        max_wait: Duration,
    ) -> Option<Reservation> {
        Some(self.decide(ctx, rate, cost, max_wait))
    }

    async fn reserve_all(
        &self,
        items: &[(Ctx<'_>, RateSpec)],
        max_wait: Duration,
    ) -> Result<BatchReservation, BackendError> {
        for (i, (a, _)) in items.iter().enumerate() {
            if items[..i].iter().any(|(b, _)| a.key == b.key) {
                return Err(BackendError::new(
                    "memory",
                    format!("state key `{}` appears twice in one batch", a.key.encoded()),
                ));
            }
        }
        let now = self.now();
        let max_wait = nanos(max_wait);
        // Lock every shard involved, in index order so two batches cannot deadlock.
        let mut indices: Vec<usize> = items
            .iter()
            .map(|(c, _)| Self::shard_index(c.key))
            .collect();
        indices.sort_unstable();
        indices.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = indices
            .iter()
            .map(|&i| {
                (
                    i,
                    self.shards[i]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                )
            })
            .collect();
        let shard_of = |guards: &mut [(usize, MutexGuard<'_, Shard>)], k: &StateKey| -> usize {
            let i = Self::shard_index(k);
            guards
                .iter()
                .position(|(j, _)| *j == i)
                .unwrap_or_else(|| unreachable!("locked above"))
        };
        // First decide every item without storing, then store all or nothing.
        for (index, (ctx, rate)) in items.iter().enumerate() {
            let pos = shard_of(&mut guards, ctx.key);
            let entry = guards[pos].1.entry(ctx.key, now);
            if let Err(retry) = rate.measure_and_replace(&mut entry.rate, now, 1, max_wait, false) {
                return Ok(BatchReservation::Denied {
                    index,
                    retry_after: from_nanos(retry),
                });
            }
        }
        // Keys are distinct and the shards locked, so the dry run above holds;
        // every key is charged at the latest slot, when the caller proceeds.
        let mut wait = 0;
        for (ctx, rate) in items {
            let pos = shard_of(&mut guards, ctx.key);
            let entry = guards[pos].1.entry(ctx.key, now);
            if let Ok(w) = rate.measure_and_replace(&mut entry.rate, now, 1, max_wait, false) {
                wait = wait.max(w);
            }
        }
        for (ctx, rate) in items {
            let pos = shard_of(&mut guards, ctx.key);
            let entry = guards[pos].1.entry(ctx.key, now);
            rate.record_at(&mut entry.rate, now, now + wait);
            entry.refresh_idle(Some(rate), now);
        }
        Ok(BatchReservation::Granted {
            wait: from_nanos(wait),
        })
    }

    async fn rate_state(&self, ctx: Ctx<'_>, rate: &RateSpec) -> Result<RateState, BackendError> {
        let now = self.now();
        let shard = self.shard(ctx.key);
        let empty = RateCell::default();
        let cell = shard.get(ctx.key).map_or(&empty, |e| &e.rate);
        Ok(RateState::of_cell(rate, cell, now))
    }

    async fn acquire_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        spec: &ConcurrencySpec,
    ) -> Result<LeaseOutcome, BackendError> {
        let now = self.now();
        let mut shard = self.shard(ctx.key);
        let entry = shard.entry(ctx.key, now);
        let out = lease::acquire(
            &mut entry.leases,
            holder.as_str(),
            now,
            nanos(spec.lease),
            spec.max,
        );
        entry.refresh_idle(None, now);
        Ok(match out {
            lease::Acquire::Acquired { holders } => LeaseOutcome::Acquired { holders },
            lease::Acquire::Full { retry_after_ns } => LeaseOutcome::Full {
                retry_after: from_nanos(retry_after_ns),
            },
        })
    }

    async fn renew_lease(
        &self,
        ctx: Ctx<'_>,
        holder: &HolderId,
        lease: Duration,
    ) -> Result<bool, BackendError> {
        let now = self.now();
        let mut shard = self.shard(ctx.key);
        let Some(entry) = shard.get_mut(ctx.key) else {
            return Ok(false);
        };
        let kept = lease::renew(&mut entry.leases, holder.as_str(), now, nanos(lease));
        entry.refresh_idle(None, now);
        Ok(kept)
    }

    async fn release_lease(&self, ctx: Ctx<'_>, holder: &HolderId) -> Result<bool, BackendError> {
        Ok(self.release_lease_now(ctx, holder).unwrap_or(false))
    }

    fn release_lease_now(&self, ctx: Ctx<'_>, holder: &HolderId) -> Option<bool> {
        let now = self.now();
        let released = {
            let mut shard = self.shard(ctx.key);
            let entry = shard.entry(ctx.key, now);
            let released = lease::release(&mut entry.leases, holder.as_str(), now);
            entry.refresh_idle(None, now);
            released
        };
        if released {
            self.releases.notify(ctx.key.encoded());
        }
        Some(released)
    }

    async fn lease_state(
        &self,
        ctx: Ctx<'_>,
        spec: &ConcurrencySpec,
    ) -> Result<ConcurrencyState, BackendError> {
        let now = self.now();
        let shard = self.shard(ctx.key);
        let live = shard
            .get(ctx.key)
            .map(|e| {
                lease::holders(&e.leases)
                    .filter(|l| l.expires_at > now)
                    .map(|l| l.expires_at)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Ok(ConcurrencyState {
            holders: live.len() as u32,
            max: spec.max,
            next_expiry: live.iter().min().map(|&t| from_nanos(t - now)),
        })
    }

    fn runs_policies(&self) -> bool {
        true
    }

    async fn check_policy(
        &self,
        ctx: Ctx<'_>,
        check: &PolicyCheck<'_>,
    ) -> Result<PolicyOutcome, BackendError> {
        Ok(self.decide_policy(ctx, check))
    }

    fn check_policy_now(&self, ctx: Ctx<'_>, check: &PolicyCheck<'_>) -> Option<PolicyOutcome> {
        Some(self.decide_policy(ctx, check))
    }

    async fn set_ban(
        &self,
        ctx: Ctx<'_>,
        duration: Option<Duration>,
    ) -> Result<bool, BackendError> {
        let now = self.now();
        let mut shard = self.shard(ctx.key);
        let entry = shard.entry(ctx.key, now);
        let cell = entry.policy.get_or_insert_with(Box::default);
        let held = cell.banned_until > now;
        match duration {
            Some(d) => {
                cell.banned_until = cell.banned_until.max(now.saturating_add(nanos(d)));
                entry.keep_for(nanos(d), now);
            }
            None => cell.banned_until = 0,
        }
        Ok(held)
    }

    async fn list_change(
        &self,
        ctx: Ctx<'_>,
        change: ListChange<'_>,
    ) -> Result<bool, BackendError> {
        let now = self.now();
        let mut shard = self.shard(ctx.key);
        let entry = shard.entry(ctx.key, now);
        let list = entry.list.get_or_insert_with(Default::default);
        list.retain(|_, &mut exp| exp == 0 || exp > now);
        let changed = match change {
            ListChange::Add { entry: e, ttl } => {
                let exp = ttl.map_or(0, |t| now.saturating_add(nanos(t)).max(1));
                list.insert(e.to_string(), exp) != Some(exp)
            }
            ListChange::Remove { entry: e } => list.remove(e).is_some(),
        };
        // Kept while it holds an entry: the longest expiry, or for good.
        let keep = list
            .values()
            .map(|&e| if e == 0 { u64::MAX } else { e - now })
            .max()
            .unwrap_or(0);
        entry.keep_for(keep, now);
        Ok(changed)
    }

    async fn list_read(&self, ctx: Ctx<'_>) -> Result<Vec<ListEntry>, BackendError> {
        let now = self.now();
        let shard = self.shard(ctx.key);
        Ok(shard
            .get(ctx.key)
            .and_then(|e| e.list.as_ref())
            .map(|l| {
                l.iter()
                    .filter(|(_, &exp)| exp == 0 || exp > now)
                    .map(|(e, &exp)| ListEntry {
                        entry: e.clone(),
                        left: (exp > 0).then(|| from_nanos(exp - now)),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn describe(&self) -> Result<String, BackendError> {
        Ok("in this process: each process has its own state, gone when it exits".into())
    }

    async fn reset(&self, ctx: Ctx<'_>) -> Result<u64, BackendError> {
        let removed = self.shard(ctx.key).remove(ctx.key);
        self.releases.notify(ctx.key.encoded());
        Ok(u64::from(removed.is_some()))
    }

    async fn subscribe_releases(&self, ctx: Ctx<'_>) -> Result<ReleaseSignal, BackendError> {
        Ok(self.releases.subscribe(ctx.key.encoded()))
    }
}

/// The memory engine's settings: none but the shared ones.
pub(crate) fn check_settings(store: &StoreConfig) -> Result<(), SettingError> {
    if store.url.is_some() {
        return Err((
            "url",
            "the memory engine keeps state in this process and takes no url; remove it or choose another engine".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Gcra;
    use crate::metrics::Metrics;

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten() {
        let engine = MemoryEngine::new();
        let metrics = Metrics::new();
        let rate = RateSpec::TokenBucket(Gcra::new(100.0, 1).unwrap_or_else(|| unreachable!()));
        let base = StateKey::new("ip");
        let mut peak = 0;
        // Five rounds of 20,000 distinct keys, each idle 10 ms after use.
        for round in 0..5 {
            for i in 0..20_000 {
                let key = base.child(&format!("{round}-{i}"));
                let ctx = Ctx {
                    key: &key,
                    metrics: &metrics,
                };
                engine
                    .reserve(ctx, &rate, Duration::ZERO)
                    .await
                    .unwrap_or_else(|_| unreachable!());
                peak = peak.max(engine.len());
            }
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        // Without sweeping 100,000 keys would be held; with it, about two rounds' worth at most.
        assert!(peak < 45_000, "peak {peak} keys");
        engine.sweep();
        assert_eq!(engine.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_keys_survive_a_sweep() {
        let engine = MemoryEngine::new();
        let metrics = Metrics::new();
        let rate = RateSpec::TokenBucket(Gcra::new(1.0, 1).unwrap_or_else(|| unreachable!()));
        let key = StateKey::new("api");
        let ctx = Ctx {
            key: &key,
            metrics: &metrics,
        };
        assert!(matches!(
            engine.reserve(ctx, &rate, Duration::ZERO).await,
            Ok(Reservation::Granted { .. })
        ));
        engine.sweep();
        assert_eq!(engine.len(), 1);
        assert!(matches!(
            engine.reserve(ctx, &rate, Duration::ZERO).await,
            Ok(Reservation::Denied { .. })
        ));
    }
}
