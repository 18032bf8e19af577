//! Per-limiter counters, updated with atomics on the hot path, and their snapshots.
//!
//! One [`Metrics`] belongs to each named limiter and is shared by all its
//! per-key children, so cardinality stays bounded however many keys exist.

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (inclusive, in milliseconds) of the wait-time histogram buckets;
/// a last bucket holds everything above.
pub const WAIT_BUCKETS_MS: [f64; 14] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// The live counters of one limiter (README.md, Metrics).
#[derive(Debug, Default)]
pub struct Metrics {
    total_acquisitions: AtomicU64,
    total_wait_us: AtomicU64,
    max_wait_us: AtomicU64,
    timeouts: AtomicU64,
    cas_failures: AtomicU64,
    coalesced: AtomicU64,
    last_acquisition_at_ms: AtomicU64,
    current_concurrent: AtomicI64,
    max_concurrent_reached: AtomicU64,
    total_releases: AtomicU64,
    backend_errors: AtomicU64,
    leases_lost: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS_MS.len() + 1],
    observer: WaitObserver,
    epoch: Epoch,
}

/// A monotonic instant paired with the wall clock at that instant, so a
/// grant's wall time derives from the monotonic reading the limiter took
/// anyway: one clock read per grant fewer on the hot path.
#[derive(Debug)]
struct Epoch {
    at: std::time::Instant,
    unix_ms: u64,
}

impl Default for Epoch {
    fn default() -> Self {
        Self {
            at: std::time::Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// Something told of every granted wait (in ms), such as an OpenTelemetry
/// histogram; set at most once per limiter.
#[derive(Default)]
struct WaitObserver(std::sync::OnceLock<Box<dyn Fn(f64) + Send + Sync>>);

impl std::fmt::Debug for WaitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "WaitObserver(set)"
        } else {
            "WaitObserver(none)"
        })
    }
}

/// A point-in-time copy of a limiter's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct MetricsSnapshot {
    /// Permits granted (by `acquire`, `try_acquire` or `check_all`).
    pub total_acquisitions: u64,
    /// Summed wait of the granted permits, in milliseconds.
    pub total_wait_time_ms: f64,
    /// `total_wait_time_ms / total_acquisitions` (0 when none).
    pub avg_wait_time_ms: f64,
    /// The longest wait of a granted permit, in milliseconds.
    pub max_wait_time_ms: f64,
    /// Refused `try_acquire` calls plus `acquire` calls that timed out.
    pub timeouts: u64,
    /// Compare-and-set conflicts met by the engine (NATS); 0 for atomic engines.
    pub cas_failures: u64,
    /// Rate requests decided in a round trip shared with others of the same
    /// key (README: Coalescing); 0 on the memory engine.
    pub coalesced: u64,
    /// Unix time in seconds of the last grant, if any.
    pub last_acquisition_at: Option<f64>,
    /// Concurrency slots this process holds now.
    pub current_concurrent: i64,
    /// Times an acquire found every concurrency slot taken.
    pub max_concurrent_reached: u64,
    /// Permits' concurrency slots given back (not slots an acquire returned unused).
    pub total_releases: u64,
    /// Store failures, whatever the failure mode did with them.
    pub backend_errors: u64,
    /// Concurrency leases lost while their permit was alive: a renewal found
    /// the slot gone, or renewals failed for longer than the lease. Another
    /// holder may have the slot; see [`Permit::lost`](crate::Permit::lost).
    pub leases_lost: u64,
    /// Grants by wait time: `(upper bound in ms, count)`, the last bound
    /// infinite. In JSON each bucket is `[bound, count]` and the infinite
    /// bound is the string `"+Inf"` (as Prometheus writes it), since JSON
    /// has no infinity.
    #[serde(serialize_with = "buckets_with_inf")]
    pub wait_histogram: Vec<(f64, u64)>,
}

fn buckets_with_inf<S: serde::Serializer>(
    buckets: &[(f64, u64)],
    out: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = out.serialize_seq(Some(buckets.len()))?;
    for &(bound, count) in buckets {
        if bound.is_finite() {
            seq.serialize_element(&(bound, count))?;
        } else {
            seq.serialize_element(&("+Inf", count))?;
        }
    }
    seq.end()
}

impl Metrics {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Has `observe` told the wait (ms) of every later grant. Returns false
    /// when an observer was set already (it stays).
    pub fn observe_waits(&self, observe: impl Fn(f64) + Send + Sync + 'static) -> bool {
        self.observer.0.set(Box::new(observe)).is_ok()
    }

    /// Counts a granted permit that waited `wait`.
    pub fn record_acquisition(&self, wait: Duration) {
        self.record_acquisition_at(wait, std::time::Instant::now());
    }

    /// Counts a granted permit that waited `wait` and was granted at `at`
    /// (a clock reading the caller took anyway).
    pub fn record_acquisition_at(&self, wait: Duration, at: std::time::Instant) {
        let since = u64::try_from(at.saturating_duration_since(self.epoch.at).as_millis())
            .unwrap_or(u64::MAX);
        self.record_acquisition_at_unix_ms(wait, self.epoch.unix_ms.saturating_add(since));
    }

    /// Counts a permit granted without any wait at `at_ms` (Unix ms), a
    /// time the caller has from its engine's clock reading.
    pub fn record_instant_grant(&self, at_ms: u64) {
        self.record_acquisition_at_unix_ms(Duration::ZERO, at_ms);
    }

    fn record_acquisition_at_unix_ms(&self, wait: Duration, at_ms: u64) {
        // Read-modify-writes only where something changes: on an in-process
        // grant each locked instruction is a measurable share of the call
        // (six of them were ~11% of a memory-engine try_acquire in `perf`).
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.total_acquisitions.fetch_add(1, Relaxed);
        if us > 0 {
            self.total_wait_us.fetch_add(us, Relaxed);
            if us > self.max_wait_us.load(Relaxed) {
                self.max_wait_us.fetch_max(us, Relaxed);
            }
        }
        let ms = wait.as_secs_f64() * 1000.0;
        let bucket = WAIT_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(WAIT_BUCKETS_MS.len());
        self.wait_buckets[bucket].fetch_add(1, Relaxed);
        if let Some(observe) = self.observer.0.get() {
            observe(ms);
        }
        // Changes once a millisecond, however many grants.
        if at_ms > self.last_acquisition_at_ms.load(Relaxed) {
            self.last_acquisition_at_ms.fetch_max(at_ms, Relaxed);
        }
    }

    /// Counts a refusal (`try_acquire` denied, `acquire` timed out).
    pub fn record_timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// Counts `n` compare-and-set conflicts.
    pub fn record_cas_failures(&self, n: u64) {
        self.cas_failures.fetch_add(n, Relaxed);
    }

    /// Counts `n` rate requests decided together in one round trip.
    pub fn record_coalesced(&self, n: u64) {
        self.coalesced.fetch_add(n, Relaxed);
    }

    /// Counts a store failure.
    pub fn record_backend_error(&self) {
        self.backend_errors.fetch_add(1, Relaxed);
    }

    /// Counts a lease lost while its permit was alive.
    pub fn record_lease_lost(&self) {
        self.leases_lost.fetch_add(1, Relaxed);
    }

    /// Counts an acquire that found every concurrency slot taken.
    pub fn record_cap_reached(&self) {
        self.max_concurrent_reached.fetch_add(1, Relaxed);
    }

    /// A concurrency slot was taken.
    pub fn slot_taken(&self) {
        self.current_concurrent.fetch_add(1, Relaxed);
    }

    /// A concurrency slot was given back; `granted` when it was a permit's
    /// (counted in `total_releases`), false when the acquire that took it
    /// was refused by the rate and returned it unused.
    pub fn slot_released(&self, granted: bool) {
        self.current_concurrent.fetch_sub(1, Relaxed);
        if granted {
            self.total_releases.fetch_add(1, Relaxed);
        }
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let total = self.total_acquisitions.load(Relaxed);
        let wait_ms = self.total_wait_us.load(Relaxed) as f64 / 1000.0;
        let last_ms = self.last_acquisition_at_ms.load(Relaxed);
        MetricsSnapshot {
            total_acquisitions: total,
            total_wait_time_ms: wait_ms,
            avg_wait_time_ms: if total == 0 {
                0.0
            } else {
                wait_ms / total as f64
            },
            max_wait_time_ms: self.max_wait_us.load(Relaxed) as f64 / 1000.0,
            timeouts: self.timeouts.load(Relaxed),
            cas_failures: self.cas_failures.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            last_acquisition_at: (last_ms != 0).then(|| last_ms as f64 / 1000.0),
            current_concurrent: self.current_concurrent.load(Relaxed),
            max_concurrent_reached: self.max_concurrent_reached.load(Relaxed),
            total_releases: self.total_releases.load(Relaxed),
            backend_errors: self.backend_errors.load(Relaxed),
            leases_lost: self.leases_lost.load(Relaxed),
            wait_histogram: WAIT_BUCKETS_MS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(self.wait_buckets.iter().map(|b| b.load(Relaxed)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_derives_average_max_and_buckets() {
        let m = Metrics::new();
        m.record_acquisition(Duration::ZERO);
        m.record_acquisition(Duration::from_millis(30));
        m.record_acquisition(Duration::from_secs(20));
        m.record_timeout();
        let s = m.snapshot();
        assert_eq!(s.total_acquisitions, 3);
        assert_eq!(s.total_wait_time_ms, 20_030.0);
        assert!((s.avg_wait_time_ms - 20_030.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.max_wait_time_ms, 20_000.0);
        assert_eq!(s.timeouts, 1);
        assert_eq!(s.wait_histogram[0], (0.0, 1));
        assert_eq!(s.wait_histogram[6], (50.0, 1));
        assert_eq!(s.wait_histogram.last().map(|b| b.1), Some(1));
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#"["+Inf",1]"#), "{json}");
        assert!(!json.contains("null"), "{json}");
        assert!(s.last_acquisition_at.is_some());
    }
}

/// Every limiter's metrics at one moment, for dashboards and files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Unix seconds when it was taken.
    pub taken_at: f64,
    /// Metrics by limiter name.
    pub limiters: std::collections::BTreeMap<String, MetricsSnapshot>,
}

impl Snapshot {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Writes the JSON to `path` through a temporary file in the same
    /// directory and a rename, so a reader never sees a half-written file.
    pub fn write_atomic(&self, path: &std::path::Path) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| std::path::Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot.json".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, self.to_json())?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}
