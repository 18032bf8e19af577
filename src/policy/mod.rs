//! Policies: rules with several windows, tiers, shadow mode, bans, allow and
//! deny lists with CIDR ranges, and violations, decided by the store so
//! every host sharing it enforces one policy exactly.
//!
//! A policy sits above the engines and reaches them only through the
//! engine trait ([`crate::engine::Engine::check_policy`]). One check:
//!
//! 1. the deny list (exact keys, address ranges): refused, 403, uncounted;
//! 2. the exempt list: admitted, uncounted;
//! 3. the store, in one step: the key's ban, then every window of the
//!    request's tier (or the default windows) on the same clock reading,
//!    all-or-nothing: a request an enforcing window refuses takes from no
//!    window; `monitor` windows count and report but never refuse; a full
//!    `block` window bans the key for its `block_duration` on every host
//!    (`decide.rs` has the rules, which every engine mirrors).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
//! use ratesync::policy::{Action, Request};
//! let registry = ratesync::Registry::from_toml_str(r#"
//!     [policies.api]
//!     key = "api_key"
//!     windows = [
//!       { window = "1s", limit = 2, action = "throttle" },
//!       { window = "1h", limit = 100, action = "block", block_duration = "15m" },
//!     ]
//!     exempt = ["10.0.0.0/8"]
//! "#).await?;
//! let api = registry.policy("api")?;
//! let client = Request::new().api_key("k-1").ip("203.0.113.5".parse().unwrap());
//! assert!(api.check(&client).await?.allowed);
//! assert!(api.check(&client).await?.allowed);
//! let third = api.check(&client).await?;
//! assert_eq!((third.allowed, third.action), (false, Action::Throttle));
//! let internal = Request::new().api_key("k-1").ip("10.1.2.3".parse().unwrap());
//! assert_eq!(api.check(&internal).await?.action, Action::Exempt);
//! # Ok(()) }
//! ```

mod bans;
mod check;
pub mod decide;
pub(crate) mod decision;
pub mod list;
mod lists;
mod metrics;
pub(crate) mod request;
pub mod rule;
mod violation;

pub use bans::{BlockEntry, BAN_INDEX_QUEUE, MAX_BAN_REASON};
pub use check::TIME_ONE_IN;
pub use decision::{Action, Decision, WindowReport};
pub use list::KeyList;
pub use lists::{ListKind, LIST_REFRESH, MAX_LIST_ENTRY};
pub use metrics::{PolicyMetrics, PolicyMetricsSnapshot, RecentViolation, EVAL_BUCKETS_US};
pub use request::{KeyPart, Request};
pub use rule::{HeaderStyle, PolicyMode, PolicySpec, WindowAction, WindowAlgorithm, WindowRule};
pub use violation::Violation;

use crate::engine::Engine;
use crate::key::StateKey;
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;

/// A named policy, cheap to clone (an `Arc` inside). Get one from
/// [`Registry::policy`](crate::Registry::policy).
#[derive(Clone)]
pub struct Policy {
    shared: Arc<Shared>,
    /// Who acts through this handle, for the audit trail ([`Policy::acting_as`]).
    actor: Option<Arc<str>>,
}

/// What a policy keeps across reloads: its name, counters and hooks.
struct Shared {
    /// Interned: a decision carries it without touching a reference count.
    name: &'static str,
    metrics: Arc<PolicyMetrics>,
    /// Engine-level counters (compare-and-set conflicts), as a limiter has.
    engine_metrics: crate::metrics::Metrics,
    violations: violation::Violations,
    /// Bans checks set, on their way to the store's ban index (`bans.rs`).
    bans: bans::BanIndex,
    /// The rules in force, swapped whole by a reload; a check reads them
    /// once and decides on that one version. An `ArcSwap`, not a lock
    /// around an `Arc`: its read takes no count all threads share (the
    /// lock's and the `Arc`'s were ~10% of an in-process check, in `perf`).
    rules: ArcSwap<Rules>,
    /// This process's copy of the lists kept in the store (see `lists.rs`).
    runtime: ArcSwap<lists::RuntimeLists>,
    /// Where decisions and enforcement actions are logged, if anywhere.
    log: arc_swap::ArcSwapOption<crate::decision_log::DecisionLog>,
}

/// One version of a policy's rules and where they are decided.
struct Rules {
    spec: Arc<PolicySpec>,
    engine: Arc<dyn Engine>,
    /// The state key every request's key narrows.
    base: StateKey,
    /// What the key is made of, for violations (`"route+ip"`).
    scope: String,
    version: u64,
}

impl Rules {
    fn new(name: &str, spec: PolicySpec, engine: Arc<dyn Engine>, version: u64) -> Self {
        let scope = spec
            .key
            .iter()
            .map(KeyPart::name)
            .collect::<Vec<_>>()
            .join("+");
        Rules {
            spec: Arc::new(spec),
            engine,
            base: StateKey::new(name),
            scope,
            version,
        }
    }

    fn window_names(&self) -> impl Iterator<Item = &str> {
        self.spec
            .windows
            .iter()
            .chain(self.spec.tiers.values().flatten())
            .map(|w| w.name)
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.rules();
        f.debug_struct("Policy")
            .field("name", &self.shared.name)
            .field("engine", &r.engine.kind())
            .field("spec", &r.spec)
            .field("config_version", &r.version)
            .finish()
    }
}

impl Policy {
    pub(crate) fn new(name: &str, spec: PolicySpec, engine: Arc<dyn Engine>, version: u64) -> Self {
        let rules = Rules::new(name, spec, engine, version);
        let metrics = Arc::new(PolicyMetrics::new(rules.window_names()));
        Self {
            shared: Arc::new(Shared {
                name: crate::interned::interned(name),
                metrics,
                engine_metrics: crate::metrics::Metrics::new(),
                violations: Default::default(),
                bans: Default::default(),
                rules: ArcSwap::from_pointee(rules),
                runtime: Default::default(),
                log: Default::default(),
            }),
            actor: None,
        }
    }

    /// Puts `spec` (decided on `engine`) in force from the next check on,
    /// for every handle of this policy; counters and hooks stay.
    pub(crate) fn replace(&self, spec: PolicySpec, engine: Arc<dyn Engine>, version: u64) {
        let rules = Rules::new(self.shared.name, spec, engine, version);
        self.shared.metrics.add_windows(rules.window_names());
        self.shared.rules.store(Arc::new(rules));
    }

    /// Logs this policy's decisions (as its `log_decisions` says) and
    /// enforcement actions to `log`.
    pub(crate) fn set_decision_log(&self, log: Option<crate::decision_log::DecisionLog>) {
        self.shared.log.store(log.map(Arc::new));
    }

    /// The decision log this policy writes to, if any.
    pub fn decision_log(&self) -> Option<crate::decision_log::DecisionLog> {
        self.shared.log.load().as_deref().cloned()
    }

    /// This policy, its enforcement actions (bans, list changes) recorded
    /// in the audit trail as done by `actor` (`"cli alice@host"`,
    /// `"admin-api 10.0.0.5"`); without it they are `"library"`'s.
    pub fn acting_as(&self, actor: impl Into<String>) -> Policy {
        Policy {
            shared: self.shared.clone(),
            actor: Some(actor.into().into()),
        }
    }

    /// Records an enforcement action in the audit trail, if the policy has
    /// a decision log. A trail that cannot be written is logged, never a
    /// reason to fail the action itself.
    pub(crate) async fn audit(&self, action: &str, subject: &str, detail: &str) {
        let Some(log) = self.decision_log() else {
            return;
        };
        let actor = self.actor.as_deref().unwrap_or("library");
        // A policy that logs keys as digests names its subjects so here too.
        let subject = log.key_as_logged(&self.rules().spec.log, subject);
        if let Err(e) = log
            .audit(actor, action, self.shared.name, &subject, detail)
            .await
        {
            tracing::error!(policy = %self.shared.name, action, error = %e,
                "cannot append to the audit trail; the action itself was done");
        }
    }

    /// The rules in force now.
    fn rules(&self) -> Arc<Rules> {
        self.shared.rules.load_full()
    }

    /// The policy's name.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// The validated rules in force.
    pub fn spec(&self) -> Arc<PolicySpec> {
        self.rules().spec.clone()
    }

    /// The configuration version of the rules in force.
    pub fn config_version(&self) -> u64 {
        self.rules().version
    }

    /// The policy's counters now.
    pub fn metrics(&self) -> PolicyMetricsSnapshot {
        let spec = self.spec();
        let (exempt, deny) = self.runtime_sizes();
        self.shared.metrics.snapshot(
            spec.windows.len(),
            spec.exempt.len() + exempt,
            spec.deny.len() + deny,
        )
    }

    /// Has `observe` told the latency (seconds) of every later check (the
    /// OpenTelemetry histogram); false when an observer was set already.
    pub fn observe_evals(&self, observe: impl Fn(f64) + Send + Sync + 'static) -> bool {
        self.shared.metrics.observe_evals(observe)
    }

    /// RateThrottle's name for [`metrics`](Self::metrics).
    pub fn get_metrics(&self) -> PolicyMetricsSnapshot {
        self.metrics()
    }

    /// Tells `hook` of every violation, through a bounded queue served by
    /// one task on the current tokio runtime: a slow or failing hook never
    /// slows a check, and a violation the full queue cannot take is counted
    /// in `violations_dropped`.
    pub fn on_violation<F, Fut>(&self, hook: F)
    where
        F: Fn(Violation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.violations.add(hook);
    }
}
