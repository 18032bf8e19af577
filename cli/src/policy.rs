//! The policy commands: `ratesync eval` (a dry run of one decision, with its
//! headers), `ratesync block` / `unblock`, and the policy lines of `ratesync check`.

use clap::Subcommand;
use ratesync::policy::{Decision, ListKind, Policy, PolicySpec, Request, WindowAction, WindowRule};
use ratesync::Registry;
use std::process::ExitCode;
use std::time::Duration;

/// The request `ratesync eval --key K` stands for: `K` in every key part
/// of the policy (and as the address when it is one), with its cost and tier.
fn request(policy: &Policy, key: &str, cost: Option<u32>, tier: Option<&str>) -> Request {
    let mut req = policy.request_for(key);
    if let Some(c) = cost {
        req = req.cost(c);
    }
    if let Some(t) = tier {
        req = req.tier(t);
    }
    req
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// One decision as `eval` prints it.
pub fn show(d: &Decision) -> String {
    let mut out = format!(
        "policy {}: {} ({}){}",
        d.policy,
        d.action.as_str(),
        if d.allowed { "admitted" } else { "refused" },
        d.tier
            .as_deref()
            .map(|t| format!(", tier {t}"))
            .unwrap_or_default()
    );
    if d.would_deny {
        out.push_str(", would deny (shadow)");
    }
    if let Some(r) = d.retry_after {
        out.push_str(&format!(", retry after {}", secs(r)));
    }
    if d.blocked_until.is_some() {
        out.push_str(", banned");
    }
    for w in &d.windows {
        out.push_str(&format!(
            "\n  window {}: {} of {} left, {} ({}), resets in {}",
            w.name,
            w.remaining,
            w.limit,
            if w.allowed { "room" } else { "full" },
            w.action.as_str(),
            secs(w.reset_after)
        ));
    }
    for (name, value) in d.headers() {
        out.push_str(&format!("\n  {name}: {value}"));
    }
    out
}

/// `ratesync eval`: exit 0 when the request would be admitted, 2 when not.
pub async fn eval(
    registry: &Registry,
    name: &str,
    key: &str,
    cost: Option<u32>,
    tier: Option<&str>,
    json: bool,
) -> crate::worker::Result<ExitCode> {
    let policy = registry.policy(name)?;
    let d = policy.eval(&request(&policy, key, cost, tier)).await?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!("{}", show(&d));
    }
    Ok(if d.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `ratesync block` (with a duration) and `ratesync unblock` (without).
pub async fn block(
    registry: &Registry,
    name: &str,
    key: &str,
    duration: Option<f64>,
    reason: &str,
) -> crate::worker::Result<ExitCode> {
    let policy = registry.policy(name)?.acting_as(crate::report::actor());
    let req = request(&policy, key, None, None);
    let shown = crate::shown_key(key);
    match duration {
        Some(s) => {
            let held = policy
                .block(&req, Duration::from_secs_f64(s), reason)
                .await?;
            println!(
                "policy {name} key {shown}: banned for {s} s on store {}{}",
                policy.spec().store,
                if held {
                    " (a ban already held; the longer stays)"
                } else {
                    ""
                }
            );
        }
        None => {
            let held = policy.unblock(&req).await?;
            println!(
                "policy {name} key {shown}: {}",
                if held { "ban lifted" } else { "was not banned" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ratesync blocks`: one line per ban in force (the stored key, the time
/// left, why), or a line saying there is none.
pub async fn blocks(registry: &Registry, name: &str) -> crate::worker::Result<ExitCode> {
    let policy = registry.policy(name)?;
    let bans = policy.list_blocks().await?;
    if bans.is_empty() {
        println!("policy {name}: no ban in force");
    }
    for b in bans {
        println!("{}  {} left  {}", b.key, secs(b.left), b.reason);
    }
    Ok(ExitCode::SUCCESS)
}

fn window(w: &WindowRule) -> String {
    let mut s = format!(
        "{} {} per {} ({})",
        w.name,
        w.limit,
        secs(w.window),
        w.algorithm.as_str()
    );
    if w.action != WindowAction::Throttle {
        s.push_str(&format!(", {}", w.action.as_str()));
    }
    if w.action == WindowAction::Block && !w.block.is_zero() {
        s.push_str(&format!(" for {}", secs(w.block)));
    }
    s
}

/// A policy as `ratesync check` lists it.
pub fn describe(spec: &PolicySpec) -> String {
    let key = spec
        .key
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(" + ");
    let windows = spec
        .windows
        .iter()
        .map(window)
        .collect::<Vec<_>>()
        .join("; ");
    let mut s = format!(
        "key {key}, windows: {windows}; cost {}, mode {}, headers {}, {}",
        spec.cost,
        spec.mode.as_str(),
        spec.headers.as_str(),
        spec.on_backend_error.as_str()
    );
    for (tier, rules) in &spec.tiers {
        s.push_str(&format!(
            "; tier {tier}: {}",
            rules.iter().map(window).collect::<Vec<_>>().join("; ")
        ));
    }
    if !spec.exempt.is_empty() {
        s.push_str(&format!("; exempt {}", spec.exempt.entries().join(", ")));
    }
    if !spec.deny.is_empty() {
        s.push_str(&format!("; deny {}", spec.deny.entries().join(", ")));
    }
    use ratesync::decision_log::{IpPrivacy, KeyPrivacy, LogDecisions};
    let logged = match spec.log.decisions {
        LogDecisions::Off => None,
        LogDecisions::All => Some("every decision".to_string()),
        LogDecisions::Denied => Some("refusals".to_string()),
        LogDecisions::Sample(p) => Some(format!("{:.3}% of decisions", p * 100.0)),
    };
    if let Some(what) = logged {
        let keys = match spec.log.keys {
            KeyPrivacy::Clear => "keys in the clear",
            KeyPrivacy::Hashed => "keys hashed",
        };
        let ips = match spec.log.ips {
            IpPrivacy::Full => "whole addresses",
            IpPrivacy::Truncated => "addresses truncated",
            IpPrivacy::None => "no addresses",
        };
        s.push_str(&format!("; logs {what} ({keys}, {ips})"));
    }
    s
}

/// `ratesync allow ...` / `ratesync deny ...`.
#[derive(Subcommand, Debug)]
pub enum ListOp {
    /// Add an entry: an exact key, an address, or a CIDR range.
    Add {
        /// The policy's name.
        #[arg(long)]
        policy: String,
        /// The entry.
        entry: String,
        /// Expire it after this long (seconds, or 90s, 15m, 1h, 1d).
        #[arg(long, value_parser = crate::seconds_arg)]
        ttl: Option<f64>,
    },
    /// Remove an entry.
    Remove {
        /// The policy's name.
        #[arg(long)]
        policy: String,
        /// The entry, as added.
        entry: String,
    },
    /// Show the entries in the store (and those of the configuration).
    List {
        /// The policy's name.
        #[arg(long)]
        policy: String,
    },
}

/// Runs one list command.
pub async fn list(
    registry: &Registry,
    kind: ListKind,
    op: ListOp,
) -> crate::worker::Result<ExitCode> {
    let name = match &op {
        ListOp::Add { policy, .. } | ListOp::Remove { policy, .. } | ListOp::List { policy } => {
            policy.clone()
        }
    };
    let p = registry.policy(&name)?.acting_as(crate::report::actor());
    let which = kind.as_str();
    match op {
        ListOp::Add { entry, ttl, .. } => {
            let changed = p
                .list_add(kind, &entry, ttl.map(Duration::from_secs_f64))
                .await?;
            println!(
                "policy {name}: {which} {} {}{}",
                if changed { "now holds" } else { "already held" },
                crate::shown_key(&entry),
                ttl.map(|t| format!(" for {t} s")).unwrap_or_default()
            );
        }
        ListOp::Remove { entry, .. } => {
            let was = p.list_remove(kind, &entry).await?;
            println!(
                "policy {name}: {which} {} {}",
                if was {
                    "no longer holds"
                } else {
                    "did not hold"
                },
                crate::shown_key(&entry)
            );
        }
        ListOp::List { .. } => {
            let spec = p.spec();
            let configured = match kind {
                ListKind::Exempt => &spec.exempt,
                ListKind::Deny => &spec.deny,
            };
            for e in configured.entries() {
                println!("{e}\t(configuration)");
            }
            for e in p.list_entries(kind).await? {
                match e.left {
                    Some(left) => println!("{}\t(store, {} left)", e.entry, secs(left)),
                    None => println!("{}\t(store)", e.entry),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
