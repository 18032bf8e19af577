//! OpenTelemetry instruments for every limiter metric, and a Prometheus `/metrics` endpoint serving them.
//!
//! Counters and gauges are *observable* instruments: they read the
//! limiters' atomic counters when a collection happens, so the hot path pays
//! nothing for them. The wait-time histogram is recorded as each permit is
//! granted. Every instrument is labelled `limiter` with the limiter's name,
//! never with a per-key key, so cardinality stays bounded.
//!
//! Names as Prometheus shows them (the exporter adds `_total` to counters):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `ratesync_acquisitions_total` | counter | permits granted |
//! | `ratesync_timeouts_total` | counter | refused `try_acquire` + timed-out `acquire` |
//! | `ratesync_cas_failures_total` | counter | compare-and-set conflicts (NATS) |
//! | `ratesync_coalesced_total` | counter | rate requests decided in a round trip shared with others |
//! | `ratesync_backend_errors_total` | counter | store failures |
//! | `ratesync_leases_lost_total` | counter | concurrency leases lost while their permit was alive |
//! | `ratesync_releases_total` | counter | permits' concurrency slots given back |
//! | `ratesync_max_concurrent_reached_total` | counter | acquires that found every slot taken |
//! | `ratesync_concurrent` | gauge | slots held by this process |
//! | `ratesync_max_concurrent` | gauge | the configured cap (limiters with one) |
//! | `ratesync_max_wait_ms` | gauge | longest wait of a granted permit |
//! | `ratesync_avg_wait_ms` | gauge | mean wait of granted permits |
//! | `ratesync_wait_ms` | histogram | waits of granted permits (`_bucket`, `_sum`, `_count`), buckets 0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000 ms |
//!
//! Policies' instruments, labelled `policy` (and `window` where named),
//! never with a key:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `ratesync_policy_requests_total` | counter | checks, labelled also `outcome`: `allowed`, `throttled`, `blocked`, `denied`, `exempt` |
//! | `ratesync_policy_shadow_would_deny_total` | counter | admitted checks a shadow window or monitor mode would have refused |
//! | `ratesync_policy_violations_total` | counter | checks in which a window had no room |
//! | `ratesync_policy_violations_dropped_total` | counter | violations a full hook queue could not take |
//! | `ratesync_policy_bans_total` | counter | bans set by `block` windows or by hand |
//! | `ratesync_policy_backend_errors_total` | counter | store failures |
//! | `ratesync_policy_window_refused_total` | counter | refusals per `window` |
//! | `ratesync_policy_window_would_deny_total` | counter | shadow refusals per `window` |
//! | `ratesync_policy_list_entries` | gauge | entries of the `list` (`exempt`, `deny`) |
//! | `ratesync_policy_eval_duration_seconds` | histogram | check latency, buckets 5 µs to 50 ms |
//!
//! With a decision log, labelled by `sink` (`sqlite`, `postgres`):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ratesync_decision_log_events_total` | counter | decisions by `outcome`: `queued`, `dropped` (the queue was full), `written`, `duplicate` (sent again after an unclear failure, kept once) |
//! | `ratesync_decision_log_write_failures_total` | counter | batches the sink refused, each held and retried |
//! | `ratesync_decision_log_pending` | gauge | decisions queued or being written |
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = ratesync::Registry::from_file("config.toml").await?;
//! let exporter = ratesync::telemetry::PrometheusExporter::new(&registry)?;
//! let server = exporter.serve("127.0.0.1:9464".parse()?).await?; // GET /metrics
//! # drop(server); Ok(()) }
//! ```

pub use crate::http::ServeLimits;
use crate::metrics::WAIT_BUCKETS_MS;
use crate::registry::Registry;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::net::SocketAddr;
use std::sync::Arc;

/// The instrument names, as registered with OpenTelemetry (before the
/// exporter adds `_total` to counters).
pub const INSTRUMENTS: [&str; 13] = [
    "ratesync_acquisitions",
    "ratesync_timeouts",
    "ratesync_cas_failures",
    "ratesync_coalesced",
    "ratesync_backend_errors",
    "ratesync_leases_lost",
    "ratesync_releases",
    "ratesync_max_concurrent_reached",
    "ratesync_concurrent",
    "ratesync_max_concurrent",
    "ratesync_max_wait_ms",
    "ratesync_avg_wait_ms",
    "ratesync_wait_ms",
];

/// The policies' instrument names, as registered with OpenTelemetry.
pub const POLICY_INSTRUMENTS: [&str; 10] = [
    "ratesync_policy_requests",
    "ratesync_policy_shadow_would_deny",
    "ratesync_policy_violations",
    "ratesync_policy_violations_dropped",
    "ratesync_policy_bans",
    "ratesync_policy_backend_errors",
    "ratesync_policy_window_refused",
    "ratesync_policy_window_would_deny",
    "ratesync_policy_list_entries",
    "ratesync_policy_eval_duration_seconds",
];

/// The decision log's instrument names (labelled by `sink`, never by key).
pub const LOG_INSTRUMENTS: [&str; 3] = [
    "ratesync_decision_log_events",
    "ratesync_decision_log_write_failures",
    "ratesync_decision_log_pending",
];

/// The metric names a Prometheus scrape shows (counters with `_total`, the
/// histogram as its three series), for checking dashboards and rules.
pub fn exported_names() -> Vec<String> {
    let mut names = Vec::new();
    for n in LOG_INSTRUMENTS {
        match n {
            "ratesync_decision_log_pending" => names.push(n.to_string()),
            _ => names.push(format!("{n}_total")),
        }
    }
    for n in POLICY_INSTRUMENTS {
        match n {
            "ratesync_policy_list_entries" => names.push(n.to_string()),
            "ratesync_policy_eval_duration_seconds" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{n}{suffix}"));
                }
            }
            _ => names.push(format!("{n}_total")),
        }
    }
    for n in INSTRUMENTS {
        match n {
            "ratesync_concurrent"
            | "ratesync_max_concurrent"
            | "ratesync_max_wait_ms"
            | "ratesync_avg_wait_ms" => names.push(n.to_string()),
            "ratesync_wait_ms" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{n}{suffix}"));
                }
            }
            _ => names.push(format!("{n}_total")),
        }
    }
    names
}

fn labels(name: &str) -> [KeyValue; 1] {
    [KeyValue::new("limiter", name.to_string())]
}

impl Registry {
    /// Registers this registry's instruments with `meter` (from a
    /// `MeterProvider` you configured, with any exporter). Limiters added
    /// later are covered too.
    pub fn install_telemetry(&self, meter: &Meter) {
        // One instrument per metrics field, read at each collection.
        macro_rules! observed {
            ($instrument:ident, $name:literal, $desc:literal, $field:ident) => {{
                let reg = self.clone();
                meter
                    .$instrument($name)
                    .with_description($desc)
                    .with_callback(move |o| {
                        for (name, m) in reg.metrics() {
                            o.observe(m.$field, &labels(&name));
                        }
                    })
                    .build();
            }};
        }
        observed!(
            u64_observable_counter,
            "ratesync_acquisitions",
            "Permits granted",
            total_acquisitions
        );
        observed!(
            u64_observable_counter,
            "ratesync_timeouts",
            "Refused try_acquire calls and timed-out acquire calls",
            timeouts
        );
        observed!(
            u64_observable_counter,
            "ratesync_cas_failures",
            "Compare-and-set conflicts met by the engine",
            cas_failures
        );
        observed!(
            u64_observable_counter,
            "ratesync_coalesced",
            "Rate requests decided in a round trip shared with others of the same key",
            coalesced
        );
        observed!(
            u64_observable_counter,
            "ratesync_backend_errors",
            "Store failures, whatever the failure mode did",
            backend_errors
        );
        observed!(
            u64_observable_counter,
            "ratesync_leases_lost",
            "Concurrency leases lost while their permit was alive",
            leases_lost
        );
        observed!(
            u64_observable_counter,
            "ratesync_releases",
            "Concurrency slots given back",
            total_releases
        );
        observed!(
            u64_observable_counter,
            "ratesync_max_concurrent_reached",
            "Acquires that found every concurrency slot taken",
            max_concurrent_reached
        );
        observed!(
            i64_observable_gauge,
            "ratesync_concurrent",
            "Concurrency slots this process holds",
            current_concurrent
        );
        let reg = self.clone();
        meter
            .u64_observable_gauge("ratesync_max_concurrent")
            .with_description("The configured concurrency cap")
            .with_callback(move |o| {
                for (name, l) in reg.limiters() {
                    if let Some(c) = l.spec().concurrency {
                        o.observe(u64::from(c.max), &labels(&name));
                    }
                }
            })
            .build();
        observed!(
            f64_observable_gauge,
            "ratesync_max_wait_ms",
            "Longest wait of a granted permit, ms",
            max_wait_time_ms
        );
        observed!(
            f64_observable_gauge,
            "ratesync_avg_wait_ms",
            "Mean wait of granted permits, ms",
            avg_wait_time_ms
        );
        let histogram = meter
            .f64_histogram("ratesync_wait_ms")
            .with_description("Waits of granted permits, ms")
            .with_boundaries(WAIT_BUCKETS_MS.to_vec())
            .build();
        self.watch_limiters(Arc::new(move |name, metrics| {
            let (histogram, attrs) = (histogram.clone(), labels(name));
            metrics.observe_waits(move |ms| histogram.record(ms, &attrs));
        }));
        self.install_policy_telemetry(meter);
        self.install_log_telemetry(meter);
    }

    fn install_log_telemetry(&self, meter: &Meter) {
        let sink = |l: &crate::decision_log::DecisionLog| KeyValue::new("sink", l.sink().kind());
        let reg = self.clone();
        meter
            .u64_observable_counter("ratesync_decision_log_events")
            .with_description(
                "Decisions the log queued, dropped (queue full), wrote, and found written already",
            )
            .with_callback(move |o| {
                if let Some(l) = reg.decision_log() {
                    let s = l.stats();
                    for (outcome, n) in [
                        ("queued", s.enqueued),
                        ("dropped", s.dropped),
                        ("written", s.written),
                        ("duplicate", s.duplicates),
                    ] {
                        o.observe(n, &[sink(&l), KeyValue::new("outcome", outcome)]);
                    }
                }
            })
            .build();
        let reg = self.clone();
        meter
            .u64_observable_counter("ratesync_decision_log_write_failures")
            .with_description("Batches the sink refused (each is held and retried)")
            .with_callback(move |o| {
                if let Some(l) = reg.decision_log() {
                    o.observe(l.stats().write_failures, &[sink(&l)]);
                }
            })
            .build();
        let reg = self.clone();
        meter
            .u64_observable_gauge("ratesync_decision_log_pending")
            .with_description("Decisions queued or being written")
            .with_callback(move |o| {
                if let Some(l) = reg.decision_log() {
                    o.observe(l.stats().pending, &[sink(&l)]);
                }
            })
            .build();
    }

    fn install_policy_telemetry(&self, meter: &Meter) {
        let policy = |name: &str| KeyValue::new("policy", name.to_string());
        macro_rules! observed {
            ($name:literal, $desc:literal, |$m:ident, $o:ident, $p:ident| $body:expr) => {{
                let reg = self.clone();
                meter
                    .u64_observable_counter($name)
                    .with_description($desc)
                    .with_callback(move |$o| {
                        for p in reg.policies().values() {
                            let $m = p.metrics();
                            let $p = policy(p.name());
                            $body;
                        }
                    })
                    .build();
            }};
        }
        observed!(
            "ratesync_policy_requests",
            "Policy checks, by outcome",
            |m, o, p| {
                for (outcome, n) in [
                    ("allowed", m.allowed_requests - m.exempt),
                    ("throttled", m.throttled),
                    ("blocked", m.blocked),
                    ("denied", m.denied),
                    ("exempt", m.exempt),
                ] {
                    o.observe(n, &[p.clone(), KeyValue::new("outcome", outcome)]);
                }
            }
        );
        observed!(
            "ratesync_policy_shadow_would_deny",
            "Admitted checks a shadow window or monitor mode would have refused",
            |m, o, p| o.observe(m.shadow_would_deny, &[p])
        );
        observed!(
            "ratesync_policy_violations",
            "Checks in which a window had no room",
            |m, o, p| o.observe(m.total_violations, &[p])
        );
        observed!(
            "ratesync_policy_violations_dropped",
            "Violations a full hook queue could not take",
            |m, o, p| o.observe(m.violations_dropped, &[p])
        );
        observed!(
            "ratesync_policy_bans",
            "Bans set by block windows or by hand",
            |m, o, p| o.observe(m.bans_started, &[p])
        );
        observed!(
            "ratesync_policy_backend_errors",
            "Store failures of policy checks",
            |m, o, p| o.observe(m.backend_errors, &[p])
        );
        observed!(
            "ratesync_policy_window_refused",
            "Refusals per window",
            |m, o, p| for (w, (refused, _)) in &m.windows {
                o.observe(*refused, &[p.clone(), KeyValue::new("window", w.clone())]);
            }
        );
        observed!(
            "ratesync_policy_window_would_deny",
            "Shadow refusals per window",
            |m, o, p| for (w, (_, would)) in &m.windows {
                o.observe(*would, &[p.clone(), KeyValue::new("window", w.clone())]);
            }
        );
        let reg = self.clone();
        meter
            .u64_observable_gauge("ratesync_policy_list_entries")
            .with_description("Entries of a policy's exempt and deny lists")
            .with_callback(move |o| {
                for p in reg.policies().values() {
                    let m = p.metrics();
                    for (list, n) in [
                        ("exempt", m.whitelisted_count),
                        ("deny", m.blacklisted_count),
                    ] {
                        o.observe(n as u64, &[policy(p.name()), KeyValue::new("list", list)]);
                    }
                }
            })
            .build();
        let histogram = meter
            .f64_histogram("ratesync_policy_eval_duration_seconds")
            .with_description("Policy check latency, seconds")
            .with_boundaries(
                crate::policy::EVAL_BUCKETS_US
                    .iter()
                    .map(|&us| us as f64 / 1e6)
                    .collect(),
            )
            .build();
        for p in self.policies().values() {
            let (histogram, attrs) = (histogram.clone(), [policy(p.name())]);
            p.observe_evals(move |s| histogram.record(s, &attrs));
        }
    }
}

/// Errors of the Prometheus exporter.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("cannot build the Prometheus exporter: {0}")]
    Exporter(String),
    /// The address could not be bound.
    #[error("cannot serve /metrics on {addr}: {source}; is the port taken?")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A registry's metrics in Prometheus text format, through OpenTelemetry.
#[derive(Clone)]
pub struct PrometheusExporter {
    prometheus: prometheus::Registry,
    _provider: SdkMeterProvider,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrometheusExporter")
    }
}

impl PrometheusExporter {
    /// Builds a meter provider with the Prometheus exporter and installs the
    /// registry's instruments on it.
    pub fn new(registry: &Registry) -> Result<Self, TelemetryError> {
        let prometheus = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(prometheus.clone())
            .without_units()
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        registry.install_telemetry(&provider.meter("ratesync"));
        Ok(Self {
            prometheus,
            _provider: provider,
        })
    }

    /// The current metrics in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let families = self.prometheus.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Serves `GET /metrics` on `addr` until the returned handle is dropped
    /// or aborted, within the default [`ServeLimits`]. Other paths answer 404.
    ///
    /// Bind it to a loopback address (`127.0.0.1:9464`) unless the scraper
    /// is elsewhere; the endpoint has no authentication, so expose it only
    /// on a network you trust (or behind a proxy that authenticates).
    pub async fn serve(&self, addr: SocketAddr) -> Result<MetricsServer, TelemetryError> {
        self.serve_with_limits(addr, ServeLimits::default()).await
    }

    /// Like [`serve`](Self::serve), with explicit limits.
    pub async fn serve_with_limits(
        &self,
        addr: SocketAddr,
        limits: ServeLimits,
    ) -> Result<MetricsServer, TelemetryError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        let exporter = self.clone();
        let running = crate::http::server::run(
            listener,
            limits,
            crate::http::server::Protocol::Http1,
            "metrics",
            move |req, _peer| {
                let exporter = exporter.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (StatusCode::OK, exporter.encode())
                    } else {
                        (
                            StatusCode::NOT_FOUND,
                            "not found; try /metrics\n".to_string(),
                        )
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
            },
        );
        Ok(MetricsServer::new(local, running))
    }
}

/// A running `/metrics` server; stops when dropped (see
/// [`ServerHandle`](crate::http::ServerHandle)).
pub type MetricsServer = crate::http::ServerHandle;
