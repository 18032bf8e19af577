//! Server time for a backend with no clock API, bounded from below by the timestamps it stamps on writes.
//!
//! NATS KV offers no "what time is it" call, but every entry carries
//! `created`, stamped by the server when it stored the write. Writing a probe
//! key between two local readings `t0` and `t1` and reading its `created`
//! time `c` gives, for the moment `t1`, `server time >= c`: so
//! `c - t1` is a lower bound of `server - local`, whatever the host clock
//! says, and `c - t0` an upper bound. The engine keeps the best lower bound of
//! recent probes and reads "now" as `local + bound`: never ahead of the
//! server, and behind it by at most one probe's round trip. A host clock set
//! seconds wrong is therefore harmless; only the round trip (about 0.2 ms
//! on loopback) is left as error, and an entry just read raises "now" to at
//! least its own `created`.
//!
//! Local time is a monotonic clock anchored once to the wall clock, so a
//! stepped wall clock (NTP) between probes does not move the estimate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a probe counts: long enough to ride out a slow probe, short
/// enough that local clock drift (tens of ppm) stays far below a microsecond.
const PROBE_LIFETIME: Duration = Duration::from_secs(30);

/// One probe: when it was taken and the bounds it gave.
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    lower: i64,
    upper: i64,
}

/// The engine's reading of server time (see the module docs).
#[derive(Debug)]
pub struct ServerClock {
    anchor: Instant,
    anchor_unix_ns: i64,
    /// A deliberate shift of the local clock (`clock_offset_ms`), for tests.
    shift_ns: i64,
    /// The best current lower bound of `server - local`, in ns.
    offset_ns: AtomicI64,
    probes: Mutex<Vec<Probe>>,
}

impl ServerClock {
    /// A clock with no probe yet (reads the local clock until the first one).
    pub fn new(shift: i64) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Self {
            anchor: Instant::now(),
            anchor_unix_ns: unix,
            shift_ns: shift,
            offset_ns: AtomicI64::new(0),
            probes: Mutex::new(Vec::new()),
        }
    }

    /// The local clock (shifted as configured), in ns since the epoch.
    pub fn local_ns(&self) -> i64 {
        let elapsed = i64::try_from(self.anchor.elapsed().as_nanos()).unwrap_or(i64::MAX);
        self.anchor_unix_ns
            .saturating_add(elapsed)
            .saturating_add(self.shift_ns)
    }

    /// Server time now, in ns since the epoch: never ahead of the server.
    pub fn now_ns(&self) -> u64 {
        let now = self
            .local_ns()
            .saturating_add(self.offset_ns.load(Ordering::Relaxed));
        u64::try_from(now).unwrap_or(0)
    }

    /// Server time now, knowing the server has already stamped `created_ns`.
    pub fn now_at_least(&self, created_ns: u64) -> u64 {
        self.now_ns().max(created_ns)
    }

    /// Records a probe: the local clock read `t0` before a write and `t1`
    /// after it, and the server stamped the write `created_ns`.
    pub fn record_probe(&self, t0: i64, t1: i64, created_ns: i64) {
        let probe = Probe {
            at: Instant::now(),
            lower: created_ns - t1,
            upper: created_ns - t0,
        };
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.retain(|p| p.at.elapsed() < PROBE_LIFETIME);
        probes.push(probe);
        let best = probes.iter().map(|p| p.lower).max().unwrap_or(0);
        self.offset_ns.store(best, Ordering::Relaxed);
    }

    /// How far "now" may be behind the server: the gap between the bounds of
    /// the tightest live probe (`None` before the first probe).
    pub fn uncertainty(&self) -> Option<Duration> {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let best = probes.iter().map(|p| p.lower).max()?;
        let tightest_upper = probes.iter().map(|p| p.upper).min()?;
        Some(Duration::from_nanos(
            u64::try_from(tightest_upper - best).unwrap_or(0),
        ))
    }

    /// The current estimate of `server - local` in ns (for logs and tests).
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server 5 s ahead of a host whose clock is also shifted -2 s: the
    /// estimate lands within the probe's round trip, and never ahead.
    #[test]
    fn probes_bound_the_offset_from_below() {
        let clock = ServerClock::new(-2_000_000_000);
        let true_offset: i64 = 7_000_000_000; // server - shifted local
        let t0 = clock.local_ns();
        let created = t0 + true_offset + 100_000; // stamped 0.1 ms after t0
        let t1 = t0 + 300_000; // reply 0.3 ms after t0
        clock.record_probe(t0, t1, created);
        let est = clock.offset_ns();
        assert!(est <= true_offset, "estimate {est} ahead of {true_offset}");
        assert!(true_offset - est <= 300_000);
        assert_eq!(clock.uncertainty(), Some(Duration::from_micros(300)));
        // A tighter probe raises the bound; a looser one does not lower it.
        clock.record_probe(
            t0 + 1_000_000,
            t0 + 1_050_000,
            t0 + 1_000_000 + true_offset + 20_000,
        );
        let tighter = clock.offset_ns();
        assert!(tighter > est && tighter <= true_offset);
        clock.record_probe(t0, t0 + 5_000_000, t0 + true_offset);
        assert_eq!(clock.offset_ns(), tighter);
        assert!(clock.now_at_least(u64::MAX - 1) == u64::MAX - 1);
    }
}
