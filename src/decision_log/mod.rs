//! The decision log: who is being limited, since when, by which rule,
//! across every host.
//!
//! A policy with `log_decisions` set hands each decision it logs to a
//! [`DecisionLog`]: the check only adds the event to its thread's chunk
//! of a bounded in-memory queue (`queue.rs`; when full the events are
//! dropped and counted in [`LogStats::dropped`]), and a background writer
//! sends batches to the sink. Logging never slows a check by more than that push, and never
//! fails one: a sink outage holds the writer's batch and retries it (with
//! backoff, logged through `tracing`) while the queue absorbs what it can.
//!
//! Sinks ([`LogSink`]): PostgreSQL ([`PostgresSink`], feature `postgres`),
//! which any number of hosts write to, and an embedded SQLite file
//! ([`SqliteSink`], feature `sqlite`) for one machine. Both keep raw
//! events and per-minute rollups per (policy, window, key, allowed), and
//! answer the [`crate::analytics`] from the same SQL. Each event carries a
//! unique id, so a batch written again after an unclear failure counts once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ratesync-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("log.sqlite3");
//! use ratesync::policy::Request;
//! let registry = ratesync::Registry::from_toml_str(&format!(r#"
//!     [decision_log]
//!     path = {path:?}
//!
//!     [policies.api]
//!     key = "api_key"
//!     windows = [{{ window = "1m", limit = 2 }}]
//!     log_decisions = true
//! "#, path = path.display().to_string())).await?;
//! let api = registry.policy("api")?;
//! for _ in 0..3 {
//!     api.check(&Request::new().api_key("k-1").path("/v1/items")).await?;
//! }
//! let log = registry.decision_log().expect("configured");
//! log.flush().await?;
//! let summary = log.analytics().summary(1, None).await?;
//! assert_eq!((summary.window.total, summary.window.blocked), (3, 1));
//! registry.close().await;
//! # Ok(()) }
//! ```
//!
//! Privacy, per policy: `log_keys = "hashed"` keeps keys and users as
//! keyed digests ([`crate::hash_key_with_secret`] under
//! `decision_log.key_secret`), `log_ips = "truncated"` keeps an address's
//! /24 (IPv4) or /48 (IPv6), `"none"` drops it.
//!
//! Retention: the writer deletes events older than `retention` and
//! rollups older than `rollup_retention` every `cleanup_interval`, in
//! statements of `cleanup_batch` rows; [`DecisionLog::cleanup`] (and
//! `ratesync log cleanup`) does it on demand.

pub mod audit_trail;
pub mod event;
#[cfg(feature = "postgres")]
mod postgres;
mod queue;
mod rule;
pub mod sink;
#[cfg(feature = "sqlite")]
mod sqlite;
mod writer;

pub use crate::config::decision_log::host_name;
pub use event::DecisionEvent;
#[cfg(feature = "postgres")]
pub use postgres::PostgresSink;
pub use rule::{IpPrivacy, KeyPrivacy, LogDecisions, LogRule};
pub use sink::{Cleaned, LogSink, StoredRecord};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSink;

use crate::config::decision_log::{LogSettings, SinkChoice};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::policy::decision::Decision;
use crate::policy::request::Request;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A decision log: a bounded queue, its writer, and the sink. Cheap to
/// clone (an `Arc` inside).
#[derive(Clone)]
pub struct DecisionLog {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    queue: Arc<queue::EventQueue>,
    wake: tokio::sync::Notify,
    /// Interned: an event carries it without a count all threads share.
    host: &'static str,
    settings: LogSettings,
    sink: Arc<dyn LogSink>,
    stats: Counters,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    duplicates: AtomicU64,
    write_failures: AtomicU64,
    cleaned_events: AtomicU64,
    cleaned_rollups: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What a decision log has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Decisions queued.
    pub enqueued: u64,
    /// Decisions the full queue could not take (never written).
    pub dropped: u64,
    /// Decisions written.
    pub written: u64,
    /// Decisions sent again after an unclear failure and found written.
    pub duplicates: u64,
    /// Writes that failed (each retried).
    pub write_failures: u64,
    /// Decisions waiting now (queued or being written).
    pub pending: u64,
    /// Raw events and rollup rows deleted by retention.
    pub cleaned: Cleaned,
    /// The last write error, without secrets.
    pub last_error: Option<String>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("sink", &self.inner.sink.kind())
            .field("host", &self.inner.host)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DecisionLog {
    /// Opens the sink `settings` names (`stores` holds the PostgreSQL
    /// store's connection) and starts the writer on the current runtime.
    pub async fn open(
        settings: &LogSettings,
        stores: &BTreeMap<String, StoreConfig>,
    ) -> Result<Self> {
        let sink: Arc<dyn LogSink> = match &settings.sink {
            SinkChoice::Sqlite(path) => open_sqlite(path)?,
            SinkChoice::Postgres(name) => {
                let store = stores.get(name).ok_or_else(|| {
                    Error::Unsupported(format!("decision_log.store: no store named `{name}`"))
                })?;
                open_postgres(name, store).await?
            }
        };
        Ok(Self::with_sink(sink, settings.clone()))
    }

    /// A log writing to `sink`, its writer started on the current runtime.
    pub fn with_sink(sink: Arc<dyn LogSink>, settings: LogSettings) -> Self {
        let inner = Arc::new(Inner {
            queue: queue::EventQueue::new(settings.queue.max(1), settings.batch.max(1)),
            wake: tokio::sync::Notify::new(),
            host: crate::interned::interned(&settings.host),
            settings,
            sink,
            stats: Counters::default(),
            writer: Mutex::new(None),
            closed: Default::default(),
        });
        let task = tokio::spawn(writer::run(Arc::downgrade(&inner)));
        *inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Self { inner }
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn LogSink> {
        &self.inner.sink
    }

    /// The settings in force.
    pub fn settings(&self) -> &LogSettings {
        &self.inner.settings
    }

    /// The analytics over this log's sink.
    pub fn analytics(&self) -> crate::analytics::Analytics {
        crate::analytics::Analytics::new(self.inner.sink.clone(), self.key_digester())
    }

    /// How a clear key is looked up when keys are logged as digests.
    fn key_digester(&self) -> Option<crate::analytics::KeyDigest> {
        let secret = self.inner.settings.key_secret.clone()?;
        Some(Arc::new(move |k: &str| {
            logged_key(KeyPrivacy::Hashed, Some(&secret), k.to_string())
        }))
    }

    /// Queues `event` for the writer; a full queue drops it (counted).
    pub fn record(&self, mut event: DecisionEvent) {
        let i = &self.inner;
        (event.origin, event.seq) = next_id();
        // Woken once per batch's worth of chunks from each thread: a
        // shared count (or the queue's length) would be read and written
        // by every thread.
        if i.queue.push(event) && wake_now(i.settings.batch.div_ceil(queue::CHUNK)) {
            i.wake.notify_one();
        }
    }

    /// `key` as `rule` keeps it: bounded, and digested under `log_keys = "hashed"`.
    pub fn key_as_logged(&self, rule: &LogRule, key: &str) -> String {
        self.owned_key_as_logged(rule, key.to_string())
    }

    fn owned_key_as_logged(&self, rule: &LogRule, key: String) -> String {
        logged_key(rule.keys, self.inner.settings.key_secret.as_ref(), key)
    }

    /// Logs `d`, the decision on `req`, if `rule` wants it: the policy's
    /// check calls this.
    pub(crate) fn note(
        &self,
        rule: &LogRule,
        req: &Request,
        d: &Decision,
        cost: u32,
        key: impl FnOnce() -> String,
    ) {
        let denied = !d.allowed || d.would_deny;
        if !rule.wants(denied, draw) {
            return;
        }
        if self.inner.queue.would_drop() {
            // Dropped either way: not built.
            self.inner.queue.count_dropped(1);
            return;
        }
        let digest = |v: &str| self.key_as_logged(rule, v);
        let text = |v: Option<&str>, max| v.map(|v| event::bounded(v, max));
        let action = if d.allowed && d.would_deny {
            "shadow"
        } else {
            d.action.as_str()
        };
        self.record(DecisionEvent {
            origin: 0,
            seq: 0,
            ts_us: unix_us(SystemTime::now()),
            key: self.owned_key_as_logged(rule, key()),
            policy: Cow::Borrowed(d.policy),
            window: Cow::Borrowed(d.window.unwrap_or("")),
            tier: text(d.tier.as_deref(), event::MAX_LOGGED_FIELD),
            path: text(req.path_given(), event::MAX_LOGGED_PATH),
            method: text(req.method_given(), event::MAX_LOGGED_FIELD),
            allowed: d.allowed,
            action: Cow::Borrowed(action),
            count: d
                .limit
                .zip(d.remaining)
                .map_or(0, |(l, r)| l.saturating_sub(r)),
            limit: d.limit,
            cost,
            ip: req.ip_addr().and_then(|ip| rule.ips.apply(ip)),
            user: req.user_given().map(digest),
            host: Cow::Borrowed(self.inner.host),
            config_version: d.config_version,
        });
    }

    /// Writes everything queued before this call; fails (after `within`)
    /// when the sink does not take it, the events staying queued.
    pub async fn flush_within(&self, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let i = &self.inner;
            let pending = self.stats().pending;
            if pending == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let why = i
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return Err(Error::Unsupported(format!(
                    "decision log: {} decisions not written within {:.1} s{}",
                    pending,
                    within.as_secs_f64(),
                    why.map(|w| format!(" (last error: {w})"))
                        .unwrap_or_default()
                )));
            }
            i.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`flush_within`](Self::flush_within) 10 seconds.
    pub async fn flush(&self) -> Result<()> {
        self.flush_within(Duration::from_secs(10)).await
    }

    /// Writes what is queued (at most 5 s) and stops the writer; later
    /// decisions are queued but never written (and dropped, counted, once
    /// the queue is full).
    pub async fn close(&self) {
        if let Err(e) = self.flush_within(Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "decision log closed with decisions unwritten");
        }
        self.inner.closed.store(true, Relaxed);
        let task = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            t.abort();
        }
    }

    /// Deletes raw events and rollups older than `older_than`, `batch_size`
    /// rows per statement.
    pub async fn cleanup(&self, older_than: Duration, batch_size: u32) -> Result<Cleaned> {
        self.inner
            .cleanup_older(older_than, older_than, batch_size.max(1))
            .await
            .map_err(|e| Error::Unsupported(format!("decision log cleanup: {e}")))
    }

    /// The log's counters now.
    pub fn stats(&self) -> LogStats {
        let s = &self.inner.stats;
        // Read in this order, a concurrent drop can only be missed, never
        // counted without its event.
        let dropped = self.inner.queue.dropped();
        let accepted = self.inner.queue.accepted().max(dropped);
        let (written, duplicates) = (s.written.load(Relaxed), s.duplicates.load(Relaxed));
        LogStats {
            enqueued: accepted - dropped,
            dropped,
            written,
            duplicates,
            write_failures: s.write_failures.load(Relaxed),
            pending: (accepted - dropped).saturating_sub(written + duplicates),
            cleaned: Cleaned {
                events: s.cleaned_events.load(Relaxed),
                rollups: s.cleaned_rollups.load(Relaxed),
            },
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Appends an enforcement action to the audit trail (see
    /// [`audit_trail`]): `actor` who did it, `action` what (`ban`,
    /// `unban`, `list_add`, `list_remove`, `reload`), on `subject` of `policy`.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        policy: &str,
        subject: &str,
        detail: &str,
    ) -> Result<StoredRecord> {
        let draft = StoredRecord {
            seq: 0,
            ts_us: unix_us(SystemTime::now()),
            actor: event::bounded(actor, event::MAX_LOGGED_FIELD),
            action: event::bounded(action, event::MAX_LOGGED_FIELD),
            policy: event::bounded(policy, event::MAX_LOGGED_FIELD),
            subject: event::bounded(subject, event::MAX_LOGGED_KEY),
            detail: event::bounded(detail, event::MAX_LOGGED_PATH),
            prev: String::new(),
            hash: String::new(),
        };
        self.inner
            .sink
            .append_audit(&draft)
            .await
            .map_err(trail_error)
    }

    /// Reads the whole audit trail in order and checks every link: the
    /// number of records, or the first broken one.
    pub async fn verify_audit(&self) -> Result<std::result::Result<u64, audit_trail::BrokenLink>> {
        let mut v = audit_trail::Verifier::default();
        loop {
            let page = self
                .inner
                .sink
                .audit_records(v.last_seq(), 1000)
                .await
                .map_err(trail_error)?;
            if page.is_empty() {
                return Ok(Ok(v.checked()));
            }
            if let Err(broken) = v.feed(&page) {
                return Ok(Err(broken));
            }
        }
    }

    /// Every audit record after `after_seq`, at most `limit`, in order.
    pub async fn audit_records(&self, after_seq: i64, limit: u32) -> Result<Vec<StoredRecord>> {
        self.inner
            .sink
            .audit_records(after_seq, limit)
            .await
            .map_err(trail_error)
    }
}

impl Inner {
    /// Deletes events older than `events` and rollups older than
    /// `rollups`, `batch` rows per statement, and counts what went.
    async fn cleanup_older(
        &self,
        events: Duration,
        rollups: Duration,
        batch: u32,
    ) -> std::result::Result<Cleaned, crate::error::BackendError> {
        let now = unix_us(SystemTime::now());
        let events_before = now.saturating_sub(crate::units::micros(events));
        let rollups_before = now
            .saturating_sub(crate::units::micros(rollups))
            .div_euclid(1_000_000);
        let c = self
            .sink
            .cleanup(events_before, rollups_before, batch)
            .await?;
        self.stats.cleaned_events.fetch_add(c.events, Relaxed);
        self.stats.cleaned_rollups.fetch_add(c.rollups, Relaxed);
        Ok(c)
    }
}

thread_local! {
    /// This thread's events' origin, its next seq, and the chunks it
    /// queued since it last woke the writer.
    static THREAD: std::cell::Cell<(i64, i64, usize)> =
        std::cell::Cell::new((rand::random::<i64>(), 0, 0));
}

/// A new event id: the thread's origin (random) and its next seq, unique
/// without a count threads share.
fn next_id() -> (i64, i64) {
    THREAD.with(|t| {
        let (origin, seq, queued) = t.get();
        t.set((origin, seq + 1, queued));
        (origin, seq)
    })
}

/// True once per `chunks` chunks queued by this thread.
fn wake_now(chunks: usize) -> bool {
    THREAD.with(|t| {
        let (origin, seq, queued) = t.get();
        let queued = queued + 1;
        let now = queued >= chunks.max(1);
        t.set((origin, seq, if now { 0 } else { queued }));
        now
    })
}

/// `key` as the log keeps it: bounded, and digested under `secret` when
/// `privacy` says so.
fn logged_key(privacy: KeyPrivacy, secret: Option<&crate::secret::Secret>, key: String) -> String {
    match (privacy, secret) {
        (KeyPrivacy::Hashed, Some(s)) => {
            crate::key::hash_key_with_secret(s.expose().as_bytes(), event::bounded_key_owned(key))
        }
        _ => event::bounded_key_owned(key),
    }
}

/// A sink's failure on the audit trail, as the library's error.
fn trail_error(e: crate::error::BackendError) -> Error {
    Error::Unsupported(format!("audit trail: {e}"))
}

/// Microseconds since the Unix epoch.
pub(crate) fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, crate::units::micros)
}

/// A uniform draw in [0, 1), from the thread's generator.
fn draw() -> f64 {
    use rand::Rng;
    rand::thread_rng().gen::<f64>()
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn LogSink>> {
    Ok(Arc::new(SqliteSink::open(path).map_err(|e| {
        Error::Unsupported(format!(
            "decision_log.path: cannot open {}: {}; check the directory exists and is writable",
            path.display(),
            e.message
        ))
    })?))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(_: &std::path::Path) -> Result<Arc<dyn LogSink>> {
    Err(Error::Unsupported(
        "decision_log: this build has no SQLite sink (feature `sqlite`); build with it or name a PostgreSQL store".into(),
    ))
}

#[cfg(feature = "postgres")]
async fn open_postgres(name: &str, store: &StoreConfig) -> Result<Arc<dyn LogSink>> {
    Ok(Arc::new(PostgresSink::connect(name, store).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &str, _: &StoreConfig) -> Result<Arc<dyn LogSink>> {
    Err(Error::Unsupported(
        "decision_log.store: this build has no PostgreSQL (feature `postgres`)".into(),
    ))
}
