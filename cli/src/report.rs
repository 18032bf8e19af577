//! `ratesync report`, `ratesync log cleanup` and `ratesync audit verify`:
//! the decision log from the terminal.

use ratesync::analytics::Analytics;
use ratesync::decision_log::DecisionLog;
use ratesync::Registry;
use std::process::ExitCode;
use std::time::Duration;

/// `ratesync report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub what: Option<ReportWhat>,
    /// The window: the last N days (1 to 365).
    #[arg(long, default_value_t = 7, global = true)]
    pub days: i64,
    /// Only this policy's decisions.
    #[arg(long, global = true)]
    pub policy: Option<String>,
    /// Print the top offenders as CSV instead of the tables.
    #[arg(long)]
    pub csv: bool,
    /// How many offenders.
    #[arg(long, default_value_t = 10)]
    pub top: u32,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReportWhat {
    /// One key's decisions: totals, first and last seen, paths, recent events.
    Offender {
        /// The key as logged (or in the clear, when keys are logged hashed).
        key: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `ratesync log ...`.
#[derive(clap::Subcommand, Debug)]
pub enum LogOp {
    /// Delete raw events and rollups older than `--older-than` (default: the
    /// configured `retention`).
    Cleanup {
        /// Seconds, or 90s, 15m, 1h, 30d.
        #[arg(long, value_parser = crate::seconds_arg)]
        older_than: Option<f64>,
        /// Rows per delete statement.
        #[arg(long, default_value_t = 10_000)]
        batch: u32,
    },
    /// What the sink holds today (the serving processes' queue counters
    /// are on their /metrics).
    Stats,
}

/// `ratesync audit ...`.
#[derive(clap::Subcommand, Debug)]
pub enum AuditOp {
    /// Check every link of the audit trail; exit 1 at the first broken one.
    Verify,
    /// Print the audit trail, oldest first.
    List {
        /// Only records after this one.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn log_of(registry: &Registry) -> crate::worker::Result<DecisionLog> {
    registry.decision_log().ok_or_else(|| {
        ratesync::Error::Unsupported(
            "no decision log is configured: add a [decision_log] table (or log_decisions = true to a policy)".into(),
        )
        .into()
    })
}

/// A table: left-aligned columns padded to their widest cell.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

fn pct(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn when(us: Option<i64>) -> String {
    us.map_or_else(
        || "-".to_string(),
        |us| ratesync::analytics::utc_time(us.div_euclid(1_000_000)),
    )
}

/// `ratesync report`.
pub async fn report(registry: &Registry, args: ReportArgs) -> crate::worker::Result<ExitCode> {
    let log = log_of(registry)?;
    let a = log.analytics();
    let policy = args.policy.as_deref();
    let days = ratesync::analytics::clamp_days(args.days);
    match args.what {
        Some(ReportWhat::Offender { key, json }) => {
            offender(&a, &key, args.days, policy, json).await
        }
        None if args.csv => {
            print!(
                "{}",
                a.top_offenders_csv(args.days, policy, args.top).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let s = a.summary(args.days, policy).await?;
            println!(
                "decisions over the last {days} day(s){} ({} sink)\n",
                policy.map(|p| format!(", policy {p}")).unwrap_or_default(),
                log.sink().kind()
            );
            let row = |label: &str, t: &ratesync::decision_log::sink::Totals| {
                vec![
                    label.to_string(),
                    t.total.to_string(),
                    t.allowed.to_string(),
                    t.blocked.to_string(),
                    pct(t.block_rate()),
                ]
            };
            print!(
                "{}",
                table(
                    &["", "total", "allowed", "blocked", "block rate"],
                    &[
                        row("today", &s.today),
                        row(&format!("{days} day(s)"), &s.window)
                    ]
                )
            );
            let top = a.top_offenders(args.days, policy, args.top).await?;
            println!("\ntop offenders");
            if top.is_empty() {
                println!("(none refused)");
            } else {
                let rows: Vec<Vec<String>> = top
                    .iter()
                    .map(|o| {
                        vec![
                            crate::shown_key(&o.key),
                            o.blocked.to_string(),
                            o.total.to_string(),
                            pct(o.block_rate()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["key", "blocked", "total", "block rate"], &rows)
                );
            }
            let rules = a.rule_hits(args.days, policy).await?;
            println!("\nrule hits");
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    vec![
                        r.policy.clone(),
                        if r.window.is_empty() {
                            "(lists)".into()
                        } else {
                            r.window.clone()
                        },
                        r.hits.to_string(),
                        r.blocks.to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["policy", "window", "hits", "blocks"], &rows));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn offender(
    a: &Analytics,
    key: &str,
    days: i64,
    policy: Option<&str>,
    json: bool,
) -> crate::worker::Result<ExitCode> {
    let r = a.offender(key, days, policy).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r)
                .map_err(|e| ratesync::Error::Unsupported(e.to_string()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "key {} over the last {} day(s)",
        crate::shown_key(&r.key),
        r.days
    );
    println!(
        "decisions {}  allowed {}  blocked {}  block rate {}",
        r.totals.total,
        r.totals.allowed,
        r.totals.blocked,
        pct(r.block_rate)
    );
    println!(
        "first seen {}  last seen {}",
        when(r.first_seen_us),
        when(r.last_seen_us)
    );
    if !r.by_path.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = r
            .by_path
            .iter()
            .map(|p| {
                vec![
                    crate::shown_key(&p.path),
                    p.total.to_string(),
                    p.blocked.to_string(),
                ]
            })
            .collect();
        print!("{}", table(&["path", "total", "blocked"], &rows));
    }
    if !r.recent.is_empty() {
        println!("\nrecent");
        let rows: Vec<Vec<String>> = r
            .recent
            .iter()
            .map(|e| {
                vec![
                    when(Some(e.ts_us)),
                    e.policy.to_string(),
                    e.window.to_string(),
                    e.action.to_string(),
                    crate::shown_key(e.path.as_deref().unwrap_or("")),
                    e.ip.map(|i| i.to_string()).unwrap_or_default(),
                    e.host.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["when", "policy", "window", "action", "path", "ip", "host"],
                &rows
            )
        );
    }
    Ok(if r.totals.total == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `ratesync log ...`.
pub async fn log(registry: &Registry, op: LogOp) -> crate::worker::Result<ExitCode> {
    let log = log_of(registry)?;
    match op {
        LogOp::Cleanup { older_than, batch } => {
            let older = older_than.map_or(log.settings().retention, Duration::from_secs_f64);
            let c = log.cleanup(older, batch).await?;
            println!(
                "decision log ({}): deleted {} events and {} rollup rows older than {:.0} s",
                log.sink().kind(),
                c.events,
                c.rollups,
                older.as_secs_f64()
            );
        }
        LogOp::Stats => {
            let s = log.analytics().summary(1, None).await?;
            // This process queues nothing; the serving processes' queues
            // are on their /metrics (ratesync_decision_log_events_total).
            println!(
                "decision log ({}): today {} decisions, {} blocked",
                log.sink().kind(),
                s.today.total,
                s.today.blocked
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ratesync audit ...`.
pub async fn audit(registry: &Registry, op: AuditOp) -> crate::worker::Result<ExitCode> {
    let log = log_of(registry)?;
    match op {
        AuditOp::Verify => match log.verify_audit().await? {
            Ok(n) => {
                println!(
                    "audit trail ({}): {n} records, every link holds",
                    log.sink().kind()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(broken) => {
                println!("audit trail ({}): BROKEN at {broken}", log.sink().kind());
                Ok(ExitCode::FAILURE)
            }
        },
        AuditOp::List { after, limit } => {
            let recs = log.audit_records(after, limit).await?;
            let rows: Vec<Vec<String>> = recs
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        when(Some(r.ts_us)),
                        crate::shown_key(&r.actor),
                        r.action.clone(),
                        r.policy.clone(),
                        crate::shown_key(&r.subject),
                        crate::shown_key(&r.detail),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["seq", "when", "actor", "action", "policy", "subject", "detail"],
                    &rows
                )
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Who the CLI acts as in the audit trail: `cli USER@HOST`.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli {user}@{}", ratesync::decision_log::host_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_tables() {
        assert_eq!(when(Some(1_700_000_000_000_000)), "2023-11-14 22:13:20Z");
        assert_eq!(
            table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]),
            "a    bb\nxyz  1\n"
        );
    }
}
