//! Reports over the decision log: traffic summary, top offenders, hits per
//! rule, a series for charts, one offender's detail, CSV, and offenders
//! over a threshold for alerting. Windows are relative to now; `days` is
//! clamped to 1..=365. Totals, offenders, rules and series read the
//! per-minute rollups (a report over weeks never scans one row per
//! request); an offender's paths, first and last seen and recent events
//! read the raw events, so they reach back as far as `retention` keeps them.
//!
//! The same calls answer over every [`LogSink`]; see
//! [`crate::decision_log`] for an example.

use crate::decision_log::event::DecisionEvent;
use crate::decision_log::sink::{
    KeyEvents, LogSink, Offender, PathHits, Point, RuleHits, Span, Totals,
};
use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Turns a clear key into the digest the log keeps (`log_keys = "hashed"`).
pub type KeyDigest = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The longest report, in days.
pub const MAX_DAYS: u32 = 365;

/// Recent events an offender report shows.
pub const RECENT_EVENTS: u32 = 50;

/// `days` within 1..=[`MAX_DAYS`].
pub fn clamp_days(days: i64) -> u32 {
    days.clamp(1, i64::from(MAX_DAYS)) as u32
}

/// Today (since 00:00 UTC) and the whole window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The window's length in days.
    pub days: u32,
    /// Since 00:00 UTC.
    pub today: Totals,
    /// The last `days` days.
    pub window: Totals,
    /// `window.blocked / window.total`.
    pub block_rate: f64,
}

/// Admitted and refused over time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Series {
    /// The bucket, in seconds: a minute for one day, an hour for more.
    pub bucket: i64,
    /// The buckets that saw decisions, oldest first.
    pub points: Vec<Point>,
}

/// One offender's detail.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OffenderReport {
    /// The key as logged (its digest when the policy logs keys hashed).
    pub key: String,
    /// The window in days.
    pub days: u32,
    /// Its decisions.
    pub totals: Totals,
    /// `blocked / total`.
    pub block_rate: f64,
    /// Its first and last logged decision in the window, microseconds
    /// since the Unix epoch.
    pub first_seen_us: Option<i64>,
    /// See `first_seen_us`.
    pub last_seen_us: Option<i64>,
    /// Decisions by path, most first (at most 20).
    pub by_path: Vec<PathHits>,
    /// The newest decisions, newest first.
    #[serde(serialize_with = "events_json")]
    pub recent: Vec<DecisionEvent>,
}

fn events_json<S: serde::Serializer>(
    events: &[DecisionEvent],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(events.len()))?;
    for e in events {
        seq.serialize_element(&serde_json::json!({
            "ts_us": e.ts_us, "key": e.key, "policy": e.policy, "window": e.window,
            "tier": e.tier, "path": e.path, "method": e.method, "allowed": e.allowed,
            "action": e.action, "count": e.count, "limit": e.limit, "cost": e.cost,
            "ip": e.ip.map(|ip| ip.to_string()), "user": e.user, "host": &*e.host,
            "config_version": e.config_version,
        }))?;
    }
    seq.end()
}

/// Reports over one sink. Get one from
/// [`DecisionLog::analytics`](crate::decision_log::DecisionLog::analytics).
#[derive(Clone)]
pub struct Analytics {
    sink: Arc<dyn LogSink>,
    digest: Option<KeyDigest>,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("sink", &self.sink.kind())
            .finish()
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn failed(e: crate::error::BackendError) -> Error {
    Error::Unsupported(format!("decision log analytics: {e}"))
}

impl Analytics {
    /// Reports over `sink`; `digest`, when keys may be logged as digests,
    /// turns a clear key into its digest so an offender can be looked up
    /// by either.
    pub fn new(sink: Arc<dyn LogSink>, digest: Option<KeyDigest>) -> Self {
        Self { sink, digest }
    }

    /// The last `days` days up to the end of the current minute.
    pub fn span(&self, days: i64, policy: Option<&str>) -> Span {
        let days = u64::from(clamp_days(days));
        self.span_of(Duration::from_secs(days * 86_400), policy)
    }

    /// The last `window` (rounded up to whole minutes) up to the end of the
    /// current minute.
    pub fn span_of(&self, window: Duration, policy: Option<&str>) -> Span {
        let now = now_s();
        let until = now - now.rem_euclid(60) + 60;
        let minutes = ((window.as_secs() as i64 + 59) / 60).max(1);
        Span {
            since: until - minutes * 60,
            until,
            policy: policy.map(str::to_string),
        }
    }

    /// Today's and the window's totals.
    pub async fn summary(&self, days: i64, policy: Option<&str>) -> Result<Summary> {
        let span = self.span(days, policy);
        let window = self.sink.totals(&span).await.map_err(failed)?;
        let now = now_s();
        let today = Span {
            since: now - now.rem_euclid(86_400),
            ..span.clone()
        };
        let today = self.sink.totals(&today).await.map_err(failed)?;
        Ok(Summary {
            days: clamp_days(days),
            today,
            window,
            block_rate: window.block_rate(),
        })
    }

    /// The `limit` keys refused most in the window.
    pub async fn top_offenders(
        &self,
        days: i64,
        policy: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Offender>> {
        self.sink
            .top_offenders(&self.span(days, policy), limit.clamp(1, 10_000))
            .await
            .map_err(failed)
    }

    /// Decisions and refusals per policy and window.
    pub async fn rule_hits(&self, days: i64, policy: Option<&str>) -> Result<Vec<RuleHits>> {
        self.sink
            .rule_hits(&self.span(days, policy))
            .await
            .map_err(failed)
    }

    /// Admitted and refused per minute (one day) or per hour (more).
    pub async fn series(&self, days: i64, policy: Option<&str>) -> Result<Series> {
        let bucket = if clamp_days(days) == 1 { 60 } else { 3600 };
        let points = self
            .sink
            .series(&self.span(days, policy), bucket)
            .await
            .map_err(failed)?;
        Ok(Series { bucket, points })
    }

    /// One key's detail: `key` as logged, or its clear form when the log
    /// keeps digests (whichever has decisions).
    pub async fn offender(
        &self,
        key: &str,
        days: i64,
        policy: Option<&str>,
    ) -> Result<OffenderReport> {
        let span = self.span(days, policy);
        let bounded = crate::decision_log::event::bounded_key(key);
        let mut key = bounded.clone();
        let mut totals = self.sink.key_totals(&span, &key).await.map_err(failed)?;
        if totals.total == 0 {
            if let Some(d) = &self.digest {
                let digested = d(&bounded);
                let t = self
                    .sink
                    .key_totals(&span, &digested)
                    .await
                    .map_err(failed)?;
                if t.total > 0 {
                    (key, totals) = (digested, t);
                }
            }
        }
        let KeyEvents {
            first_last_us,
            by_path,
            recent,
        } = self
            .sink
            .key_events(&span, &key, RECENT_EVENTS)
            .await
            .map_err(failed)?;
        Ok(OffenderReport {
            key,
            days: clamp_days(days),
            totals,
            block_rate: totals.block_rate(),
            first_seen_us: first_last_us.map(|f| f.0),
            last_seen_us: first_last_us.map(|f| f.1),
            by_path,
            recent,
        })
    }

    /// The top offenders as CSV (`key,blocked,total,block_rate`).
    pub async fn top_offenders_csv(
        &self,
        days: i64,
        policy: Option<&str>,
        limit: u32,
    ) -> Result<String> {
        Ok(offenders_csv(
            &self.top_offenders(days, policy, limit).await?,
        ))
    }

    /// The keys refused at least `threshold` times in the last `window`,
    /// most first (at most 100): what threshold alerts watch.
    pub async fn over_threshold(
        &self,
        window: Duration,
        threshold: u64,
        policy: Option<&str>,
    ) -> Result<Vec<Offender>> {
        let found = self
            .sink
            .top_offenders(&self.span_of(window, policy), 100)
            .await
            .map_err(failed)?;
        Ok(found
            .into_iter()
            .filter(|o| o.blocked >= threshold)
            .collect())
    }
}

/// Offenders as CSV, a header line first. Keys are client input: each is
/// quoted, and one starting like a spreadsheet formula (`=`, `+`, `-`,
/// `@`, tab, CR) gets a leading `'` so no spreadsheet runs it.
pub fn offenders_csv(offenders: &[Offender]) -> String {
    let mut out = String::from("key,blocked,total,block_rate\n");
    for o in offenders {
        let rate = o.block_rate();
        out.push_str(&format!(
            "{},{},{},{rate:.4}\n",
            csv_field(&o.key),
            o.blocked,
            o.total
        ));
    }
    out
}

/// One CSV field: quoted, quotes doubled, formulas neutralised.
pub fn csv_field(text: &str) -> String {
    let risky = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    format!(
        "\"{}{}\"",
        if risky { "'" } else { "" },
        text.replace('"', "\"\"")
    )
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SSZ` (UTC, proleptic Gregorian).
pub fn utc_time(unix_secs: i64) -> String {
    let (days, rest) = (unix_secs.div_euclid(86_400), unix_secs.rem_euclid(86_400));
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(utc_time(951_825_600), "2000-02-29 12:00:00Z");
    }

    #[test]
    fn days_are_clamped() {
        assert_eq!(
            (
                clamp_days(0),
                clamp_days(-5),
                clamp_days(7),
                clamp_days(9999)
            ),
            (1, 1, 7, 365)
        );
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("1.2.3.4"), "\"1.2.3.4\"");
        let csv = offenders_csv(&[Offender {
            key: "k,1\n2".into(),
            blocked: 1,
            total: 4,
        }]);
        assert_eq!(csv, "key,blocked,total,block_rate\n\"k,1\n2\",1,4,0.2500\n");
    }
}
