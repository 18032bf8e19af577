//! A `[policies.NAME]` table as written, and its validation into a
//! [`PolicySpec`]. Every error names the key at fault
//! (`policies.api.windows[1].block_duration`) and what to write instead.

use crate::counter::{CountedWindow, SLIDING_SLOTS};
use crate::decision_log::{IpPrivacy, KeyPrivacy, LogDecisions, LogRule};
use crate::duration::{parse_seconds, Range};
use crate::error::ConfigError;
use crate::gcra::Gcra;
use crate::policy::{
    HeaderStyle, KeyList, KeyPart, PolicyMode, PolicySpec, WindowAction, WindowAlgorithm,
    WindowRule,
};
use crate::quota::{FailureMode, RateSpec};
use crate::window::SlidingWindow;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The shortest and the longest window.
pub const WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(86_400));

/// The largest limit of an exact `sliding_window` in a policy: the exact
/// log keeps one timestamp per grant (8 bytes; 80 KB per key at this
/// limit). Above it, `sliding_counter` keeps 61 counters whatever the limit.
pub const MAX_EXACT_WINDOW_LIMIT: u32 = 10_000;

/// The longest ban: a year.
pub const MAX_BLOCK: Duration = Duration::from_secs(365 * 86_400);

/// How a window counts, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAlgorithm {
    /// Exact: never more than `limit` in any window (one timestamp per grant).
    SlidingWindow,
    /// Never more than the exact window admits, 61 counters per key.
    SlidingCounter,
    /// `limit` per window, refilled evenly (`burst` at once, default `limit`).
    TokenBucket,
    /// `limit` per aligned window; one counter.
    FixedWindow,
}

/// `key = "ip"` or `key = ["route", "ip"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    /// One part.
    One(String),
    /// Several parts, in order.
    Many(Vec<String>),
}

/// One window as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Its length: `"1s"`, `"1m"`, `"1h"`, `"1d"`, `"500ms"`.
    pub window: String,
    /// Requests (cost units) per window.
    pub limit: i64,
    /// `throttle` (default), `monitor` or `block`.
    pub action: Option<WindowAction>,
    /// `block` windows: how long the key is banned (default `"0s"`: only the excess is refused).
    pub block_duration: Option<String>,
    /// Overrides the policy's `algorithm` for this window.
    pub algorithm: Option<PolicyAlgorithm>,
    /// `token_bucket`: the largest burst (default: `limit`).
    pub burst: Option<i64>,
    /// Its name in headers and metrics (default: the `window` text).
    pub name: Option<String>,
}

/// A tier as written: windows that replace the policy's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The tier's windows.
    pub windows: Vec<WindowConfig>,
}

/// A `[policies.NAME]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The store (default: the built-in `memory`).
    pub store: Option<String>,
    /// What a request's key is made of (default `"ip"`).
    pub key: Option<KeyConfig>,
    /// The windows (at least one).
    pub windows: Vec<WindowConfig>,
    /// The windows' algorithm unless they name one (default `sliding_window`).
    pub algorithm: Option<PolicyAlgorithm>,
    /// Exact keys and address ranges never limited nor counted.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Exact keys and address ranges always refused.
    #[serde(default)]
    pub deny: Vec<String>,
    /// A request's cost unless it names one (default 1).
    pub cost: Option<i64>,
    /// `enforce` (default) or `monitor`.
    pub mode: Option<PolicyMode>,
    /// `both` (default), `draft`, `legacy` or `none`.
    pub headers: Option<HeaderStyle>,
    /// `fail_closed` (default) or `fail_open`.
    pub on_backend_error: Option<FailureMode>,
    /// Per-tier windows.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Which decisions go to the decision log: `true`, `"denied"`, or a
    /// sample rate between 0 and 1 (default: none).
    pub log_decisions: Option<LogDecisionsConfig>,
    /// `clear` (default) or `hashed`: logged keys and users as digests.
    pub log_keys: Option<KeyPrivacy>,
    /// `full` (default), `truncated` (/24, /48) or `none`.
    pub log_ips: Option<IpPrivacy>,
}

/// `log_decisions = true`, `"denied"` or `0.1`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LogDecisionsConfig {
    /// Every decision, or none.
    Flag(bool),
    /// `"denied"` (or `"all"`, `"none"`).
    Which(String),
    /// A sample rate.
    Rate(f64),
}

impl LogDecisionsConfig {
    fn validate(&self) -> Result<LogDecisions, String> {
        Ok(match self {
            LogDecisionsConfig::Flag(true) => LogDecisions::All,
            LogDecisionsConfig::Flag(false) => LogDecisions::Off,
            LogDecisionsConfig::Which(w) => match w.as_str() {
                "all" => LogDecisions::All,
                "denied" => LogDecisions::Denied,
                "none" => LogDecisions::Off,
                other => {
                    return Err(format!(
                        "`{other}`: write true, false, \"denied\" or a sample rate such as 0.1"
                    ))
                }
            },
            LogDecisionsConfig::Rate(r) if *r > 0.0 && *r < 1.0 => LogDecisions::Sample(*r),
            LogDecisionsConfig::Rate(r) if *r == 1.0 => LogDecisions::All,
            LogDecisionsConfig::Rate(r) if *r == 0.0 => LogDecisions::Off,
            LogDecisionsConfig::Rate(r) => {
                return Err(format!("a sample rate is from 0 to 1, got {r}"))
            }
        })
    }
}

/// Validates `[policies.NAME]`; `store_exists` says whether a store name is defined.
pub fn validate_policy(
    source: &str,
    name: &str,
    p: &PolicyConfig,
    store_exists: impl Fn(&str) -> bool,
) -> Result<PolicySpec, ConfigError> {
    let err =
        |key: &str, msg: String| ConfigError::new(source, format!("policies.{name}.{key}"), msg);
    let store = p
        .store
        .clone()
        .unwrap_or_else(|| super::DEFAULT_STORE.to_string());
    if !store_exists(&store) {
        return Err(err("store", format!("no store named `{store}`; define [stores.{store}] or remove the setting to use the built-in memory store")));
    }
    let parts: Vec<String> = match &p.key {
        None => vec!["ip".into()],
        Some(KeyConfig::One(k)) => vec![k.clone()],
        Some(KeyConfig::Many(ks)) => ks.clone(),
    };
    if parts.is_empty() {
        return Err(err("key", "an empty list: name at least one part (ip, user, api_key, route, global, \"header:NAME\")".into()));
    }
    let key = parts
        .iter()
        .map(|k| KeyPart::parse(k).map_err(|e| err("key", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let default_algorithm = p.algorithm.unwrap_or(PolicyAlgorithm::SlidingWindow);
    let windows = validate_windows(&p.windows, default_algorithm, |k, m| err(k, m), "windows")?;
    let mut tiers = BTreeMap::new();
    for (tier, t) in &p.tiers {
        let at = format!("tiers.{tier}.windows");
        tiers.insert(
            tier.clone(),
            validate_windows(&t.windows, default_algorithm, |k, m| err(k, m), &at)?,
        );
    }
    let exempt = KeyList::parse(&p.exempt).map_err(|e| err("exempt", e))?;
    let deny = KeyList::parse(&p.deny).map_err(|e| err("deny", e))?;
    let cost = match p.cost {
        None => 1,
        Some(c) => u32::try_from(c).ok().filter(|&c| c >= 1).ok_or_else(|| {
            err(
                "cost",
                format!("must be a whole number from 1 to {}, got {c}", u32::MAX),
            )
        })?,
    };
    for (rules, at) in std::iter::once((&windows, "windows".to_string()))
        .chain(tiers.iter().map(|(t, r)| (r, format!("tiers.{t}.windows"))))
    {
        if let Some(w) = rules.iter().find(|w| cost > w.algorithm.capacity()) {
            return Err(err("cost", format!("a request of {cost} can never fit window `{}` of {at} (at most {} at once); lower cost or raise the window's limit", w.name, w.algorithm.capacity())));
        }
    }
    let log = LogRule {
        decisions: p
            .log_decisions
            .as_ref()
            .map_or(Ok(LogDecisions::Off), LogDecisionsConfig::validate)
            .map_err(|e| err("log_decisions", e))?,
        keys: p.log_keys.unwrap_or_default(),
        ips: p.log_ips.unwrap_or_default(),
    };
    Ok(PolicySpec {
        log,
        store,
        key,
        windows,
        tiers,
        exempt,
        deny,
        cost,
        mode: p.mode.unwrap_or_default(),
        headers: p.headers.unwrap_or_default(),
        on_backend_error: p.on_backend_error.unwrap_or_default(),
    })
}

fn validate_windows(
    list: &[WindowConfig],
    default_algorithm: PolicyAlgorithm,
    err: impl Fn(&str, String) -> ConfigError,
    at: &str,
) -> Result<Vec<WindowRule>, ConfigError> {
    if list.is_empty() {
        return Err(err(
            at,
            "no windows: add one, e.g. { window = \"1s\", limit = 20 }".into(),
        ));
    }
    let mut out: Vec<WindowRule> = Vec::with_capacity(list.len());
    for (i, w) in list.iter().enumerate() {
        let here = |key: &str| format!("{at}[{i}].{key}");
        let window = parse_seconds(
            &w.window,
            Range {
                min: 0.000_001,
                max: crate::duration::MAX_SECONDS,
            },
        )
        .map_err(|e| err(&here("window"), e))?;
        if window < WINDOW_RANGE.0 || window > WINDOW_RANGE.1 {
            return Err(err(
                &here("window"),
                format!("must be from 1s to 1d, got {:?}", w.window),
            ));
        }
        let limit = u32::try_from(w.limit)
            .ok()
            .filter(|&l| l >= 1)
            .ok_or_else(|| {
                err(
                    &here("limit"),
                    format!(
                        "must be a whole number from 1 to {}, got {}",
                        u32::MAX,
                        w.limit
                    ),
                )
            })?;
        let action = w.action.unwrap_or(WindowAction::Throttle);
        let block = match (&w.block_duration, action) {
            (None, _) => Duration::ZERO,
            (Some(b), WindowAction::Block) => {
                let d = parse_seconds(b, Range::ZERO_OR_MORE).map_err(|e| err(&here("block_duration"), e))?;
                if d > MAX_BLOCK {
                    return Err(err(&here("block_duration"), format!("must be at most 365d, got {b:?}")));
                }
                d
            }
            (Some(_), other) => {
                return Err(err(&here("block_duration"), format!("only a `block` window bans; this one is `{}`: remove block_duration or set action = \"block\"", other.as_str())))
            }
        };
        let algorithm = w.algorithm.unwrap_or(default_algorithm);
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let algorithm = match algorithm {
            PolicyAlgorithm::SlidingWindow => {
                if limit > MAX_EXACT_WINDOW_LIMIT {
                    return Err(err(&here("limit"), format!("an exact sliding_window keeps one timestamp per request, so its limit is at most {MAX_EXACT_WINDOW_LIMIT}; got {limit}: set algorithm = \"sliding_counter\" ({} counters per key, never admits more than the exact window)", SLIDING_SLOTS + 1)));
                }
                let sw = SlidingWindow::new(limit, window_ns)
                    .ok_or_else(|| err(&here("window"), "must be positive".into()))?;
                WindowAlgorithm::Rate(RateSpec::SlidingWindow(sw))
            }
            PolicyAlgorithm::TokenBucket => {
                let burst = match w.burst {
                    None => limit,
                    Some(b) => u32::try_from(b).ok().filter(|&b| b >= 1).ok_or_else(|| {
                        err(
                            &here("burst"),
                            format!("must be a whole number from 1 to {}, got {b}", u32::MAX),
                        )
                    })?,
                };
                let rate = f64::from(limit) / window.as_secs_f64();
                let g = Gcra::new(rate, burst).ok_or_else(|| {
                    err(
                        &here("limit"),
                        format!(
                            "{limit} per {:?} is not a rate the token bucket can hold",
                            w.window
                        ),
                    )
                })?;
                WindowAlgorithm::Rate(RateSpec::TokenBucket(g))
            }
            PolicyAlgorithm::SlidingCounter => {
                WindowAlgorithm::Counted(CountedWindow::sliding(limit, window_ns).ok_or_else(
                    || err(&here("window"), "too short for a sliding counter".into()),
                )?)
            }
            PolicyAlgorithm::FixedWindow => WindowAlgorithm::Counted(
                CountedWindow::fixed(limit, window_ns)
                    .ok_or_else(|| err(&here("window"), "must be positive".into()))?,
            ),
        };
        if w.burst.is_some()
            && !matches!(algorithm, WindowAlgorithm::Rate(RateSpec::TokenBucket(_)))
        {
            return Err(err(&here("burst"), format!("only a token_bucket window has a burst; this one is {}: remove burst or set algorithm = \"token_bucket\"", algorithm.as_str())));
        }
        let name = w
            .name
            .clone()
            .unwrap_or_else(|| w.window.trim().to_string());
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(err(&here("name"), format!("{name:?}: a window name is 1 to 64 printable ASCII characters without quotes or backslashes (it goes into RateLimit headers)")));
        }
        if out.iter().any(|o| *o.name == *name) {
            return Err(err(
                &here("name"),
                format!("two windows are named `{name}`: give one a name = \"...\""),
            ));
        }
        let tag = WindowRule::state_tag(&WindowRule::state_name(&algorithm, &name, window));
        out.push(WindowRule {
            tag,
            name: crate::interned::interned(&name),
            algorithm,
            action,
            block,
            window,
            limit,
        });
    }
    Ok(out)
}
