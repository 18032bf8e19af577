//! One check: the lists, the tier, the key, the store's decision, and the
//! [`Decision`] built from it, counted and, for a violation, handed to the
//! hooks.

use super::decide::PolicyOutcome;
use super::decision::{Action, Decision, WindowReport};
use super::request::{KeyPart, Request};
use super::rule::{PolicyMode, WindowAction, WindowRule};
use super::violation::Violation;
use super::{Policy, Rules};
use crate::engine::{Ctx, PolicyCheck};
use crate::error::{Error, Result};
use crate::key::StateKey;
use crate::quota::FailureMode;
use std::time::{Duration, Instant, SystemTime};

impl Policy {
    /// Decides `request`: counted when admitted (see the module docs of
    /// [`crate::policy`]).
    ///
    /// Errors: a request of cost 0; a store failure when the policy is
    /// `fail_closed` ([`Error::PolicyBackend`]). With `fail_open` a store
    /// failure admits the request, marked [`Decision::degraded`].
    pub async fn check(&self, request: &Request) -> Result<Decision> {
        self.decide(request, true).await
    }

    /// Decides `request` as [`check`](Self::check) would, consuming nothing
    /// and banning nobody (`ratesync eval`). Not counted in the metrics.
    pub async fn eval(&self, request: &Request) -> Result<Decision> {
        self.decide(request, false).await
    }

    /// RateThrottle's shape: checks a request whose key is `identifier`
    /// (as if every key part of the policy were `identifier`; for a policy
    /// keyed by `ip`, an address).
    pub async fn check_rate_limit(&self, identifier: &str) -> Result<Decision> {
        self.check(&self.request_for(identifier)).await
    }

    /// The request a bare `identifier` stands for (see
    /// [`check_rate_limit`](Self::check_rate_limit)).
    pub fn request_for(&self, identifier: &str) -> Request {
        let mut req = Request::new();
        if let Ok(ip) = identifier.parse() {
            req = req.ip(ip);
        }
        for part in &self.rules().spec.key {
            req = match part {
                KeyPart::User => req.user(identifier),
                KeyPart::ApiKey => req.api_key(identifier),
                KeyPart::Route => req.route(identifier),
                KeyPart::Header(h) => req.header(h.clone(), identifier),
                KeyPart::Ip | KeyPart::Global => req,
            };
        }
        req
    }

    /// The state key of `request` under `rules`.
    pub(super) fn state_key(&self, rules: &Rules, request: &Request) -> StateKey {
        // Narrowed from the base by reference: a clone of it would take
        // and drop two counts every thread shares.
        let mut parts = rules.spec.key.iter().filter_map(|p| p.value(request));
        match parts.next() {
            None => rules.base.clone(),
            Some(first) => parts.fold(rules.base.child(&first), |k, v| k.child(&v)),
        }
    }

    /// The key as the decision log shows it: the policy's key parts of
    /// `request`, joined by `|` (`""` for a global key).
    fn key_text(spec: &super::PolicySpec, request: &Request) -> String {
        let mut out = String::new();
        for (i, v) in spec.key.iter().filter_map(|p| p.value(request)).enumerate() {
            if i > 0 {
                out.push('|');
            }
            out.push_str(&v);
        }
        out
    }

    async fn decide(&self, request: &Request, commit: bool) -> Result<Decision> {
        // Timed from here when sampled; a check the store answers over the
        // network is timed always (below).
        let mut started = (commit && sampled()).then(Instant::now);
        let (s, r) = (&self.shared, self.shared.rules.load());
        let spec = &*r.spec;
        let shadow = spec.mode == PolicyMode::Monitor;
        let (rules, tier) = spec.windows_for(request.tier_name());
        let mut d = self.blank(&r, tier);
        let listed = |list: &super::list::KeyList| {
            !list.is_empty()
                && (request.ip_addr().is_some_and(|ip| list.contains_ip(ip))
                    || request.identities().any(|i| list.contains_key(&i)))
        };
        let cost = request.cost_given().unwrap_or(spec.cost);
        let (denied, exempt) = {
            let rt = s.runtime.load();
            (
                listed(&spec.deny) || listed(&rt.deny),
                listed(&spec.exempt) || listed(&rt.exempt),
            )
        };
        if denied {
            d.action = Action::Deny;
            d.allowed = shadow;
            d.would_deny = shadow;
        } else if exempt {
            d.action = Action::Exempt;
        } else {
            if cost == 0 {
                return Err(Error::Unsupported(format!(
                    "policy `{}`: a request of cost 0 counts nothing; give a cost of at least 1",
                    s.name
                )));
            }
            let key = self.state_key(&r, request);
            let check = PolicyCheck {
                rules,
                cost,
                shadow,
                commit,
            };
            let ctx = Ctx {
                key: &key,
                metrics: &s.engine_metrics,
            };
            let answer = match r.engine.check_policy_now(ctx, &check) {
                Some(out) => Ok(out),
                None => {
                    started.get_or_insert_with(Instant::now);
                    r.engine.check_policy(ctx, &check).await
                }
            };
            match answer {
                Ok(out) => {
                    self.apply(&mut d, rules, &out, shadow);
                    if commit && out.ban_started {
                        s.metrics.record_ban();
                        if let Some(left) = out.banned_for {
                            let why = format!("window `{}` full", d.window.unwrap_or_default());
                            self.index_later(&key, left, why);
                        }
                    }
                    if commit && d.violated {
                        self.report_violation(&d, &key, &r);
                    }
                }
                Err(e) => {
                    s.metrics.record_backend_error();
                    match spec.on_backend_error {
                        FailureMode::FailOpen => {
                            tracing::warn!(policy = %s.name, store = %spec.store, error = %e,
                                "store failed; admitting (on_backend_error = fail_open)");
                            d.degraded = true;
                        }
                        FailureMode::FailClosed => {
                            tracing::error!(policy = %s.name, store = %spec.store, error = %e,
                                "store failed; refusing (on_backend_error = fail_closed)");
                            return Err(Error::PolicyBackend {
                                policy: s.name.to_string(),
                                store: spec.store.clone(),
                                source: e,
                            });
                        }
                    }
                }
            }
        }
        if commit {
            s.metrics.record(&d, started.map(|t| t.elapsed()));
            if !spec.log.decisions.is_off() {
                if let Some(log) = s.log.load().as_deref() {
                    log.note(&spec.log, request, &d, cost, || {
                        Self::key_text(spec, request)
                    });
                }
            }
        }
        Ok(d)
    }

    /// An admitting decision with nothing decided yet.
    fn blank(&self, r: &Rules, tier: Option<&str>) -> Decision {
        Decision {
            allowed: true,
            action: Action::Allow,
            policy: self.shared.name,
            window: None,
            limit: None,
            remaining: None,
            reset_after: None,
            retry_after: None,
            blocked_until: None,
            violated: false,
            would_deny: false,
            tier: tier.map(str::to_string),
            config_version: r.version,
            degraded: false,
            decided_at_us: None,
            windows: Vec::new(),
            style: r.spec.headers,
        }
    }

    /// Fills `d` from the store's outcome.
    fn apply(&self, d: &mut Decision, rules: &[WindowRule], out: &PolicyOutcome, shadow: bool) {
        d.decided_at_us = out.at_unix_us;
        d.windows = rules
            .iter()
            .zip(&out.windows)
            .map(|(r, w)| WindowReport {
                name: r.name,
                limit: r.limit,
                window: r.window,
                action: r.action,
                allowed: w.allowed,
                remaining: w.remaining,
                reset_after: w.reset_after,
                retry_after: w.retry_after,
                next_after: w.next_after,
            })
            .collect();
        let banned = out.banned_for.filter(|_| !out.ban_started);
        let refusing = d
            .windows
            .iter()
            .filter(|w| !w.allowed && w.action != WindowAction::Monitor)
            .max_by_key(|w| w.retry_after);
        d.violated = banned.is_none() && d.windows.iter().any(|w| !w.allowed);
        d.would_deny = d
            .windows
            .iter()
            .any(|w| !w.allowed && w.action == WindowAction::Monitor);
        let refused = banned.is_some() || !out.counted;
        if refused {
            let by_block = banned.is_some()
                || d.windows
                    .iter()
                    .any(|w| !w.allowed && w.action == WindowAction::Block);
            // In shadow the request is admitted, and says so (`would_deny`).
            if !shadow {
                d.action = if by_block {
                    Action::Block
                } else {
                    Action::Throttle
                };
            }
            let retry = refusing.map_or(Duration::ZERO, |w| w.retry_after);
            d.retry_after = Some(retry.max(out.banned_for.unwrap_or(Duration::ZERO)));
            if let Some(ban) = out.banned_for {
                d.blocked_until = Some(SystemTime::now() + ban);
            }
            d.allowed = shadow;
            d.would_deny |= shadow;
        }
        let deciding = refusing.or_else(|| {
            d.windows
                .iter()
                .filter(|w| w.action != WindowAction::Monitor)
                .min_by_key(|w| w.remaining)
        });
        if let Some(w) = deciding {
            d.window = Some(w.name);
            d.limit = Some(w.limit);
            d.remaining = Some(w.remaining);
            d.reset_after = Some(w.reset_after);
        }
    }

    fn report_violation(&self, d: &Decision, key: &StateKey, r: &Rules) {
        let Some(w) = d
            .window
            .as_ref()
            .and_then(|n| d.windows.iter().find(|w| w.name == *n && !w.allowed))
            .or_else(|| d.windows.iter().find(|w| !w.allowed))
        else {
            return;
        };
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("action".to_string(), d.action.as_str().to_string());
        if let Some(t) = &d.tier {
            metadata.insert("tier".to_string(), t.clone());
        }
        if d.would_deny && d.allowed {
            metadata.insert("shadow".to_string(), "true".to_string());
        }
        self.shared.violations.send(
            Violation {
                key: key.encoded().to_string(),
                state_key: key.clone(),
                policy: d.policy.to_string(),
                window: w.name.to_string(),
                count: w.limit - w.remaining.min(w.limit),
                limit: w.limit,
                at: SystemTime::now(),
                blocked_until: d.blocked_until,
                retry_after: d.retry_after,
                scope: r.scope.clone(),
                metadata,
            },
            &self.shared.metrics,
        );
    }
}

/// Checks decided in this process are timed one in [`TIME_ONE_IN`]: two
/// clock readings were ~10% of such a check (`perf`, `benches/policy.rs`),
/// and an unbiased sample draws the same latency histogram.
pub const TIME_ONE_IN: u32 = 16;

/// True for one call in [`TIME_ONE_IN`] on each thread, its first among them.
fn sampled() -> bool {
    thread_local!(static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    CALLS.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % TIME_ONE_IN == 1
    })
}
