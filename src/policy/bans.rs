//! Bans: set by a full `block` window in the check's own step of the store,
//! or by hand (`block`, `unblock`), and listed (`list_blocks`).
//!
//! A ban itself lives with the key's state, where every check reads it in
//! the same round trip. So that the bans in force can be listed without
//! scanning every key of a store, each ban is also written to the policy's
//! ban index, a list kept in the store like the exempt and deny lists
//! (entry: the banned key's stored form and why; expiry: the ban's end).
//! The index is written after the ban, never in the check's step: a ban
//! set by a check reaches it through a bounded queue served by one task
//! (a full queue leaves the ban out of the listing, never out of force),
//! and a ban lifted by hand leaves it at once.

use super::request::Request;
use super::Policy;
use crate::engine::{Ctx, ListChange};
use crate::error::Result;
use crate::key::StateKey;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Bans waiting for the index, per policy, at most.
pub const BAN_INDEX_QUEUE: usize = 1024;

/// The longest reason a listed ban keeps, in bytes.
pub const MAX_BAN_REASON: usize = 256;

/// A ban in force, as [`Policy::list_blocks`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockEntry {
    /// The banned key in its stored form (see the key rules in the README).
    pub key: String,
    /// Why: the reason given to `block`, or the window that set it.
    pub reason: String,
    /// Until the ban ends (JSON: seconds).
    #[serde(serialize_with = "super::decision::seconds::one")]
    pub left: Duration,
}

/// The queue of bans a check set, to the index.
#[derive(Default)]
pub(super) struct BanIndex {
    queue: OnceLock<mpsc::Sender<Queued>>,
}

impl std::fmt::Debug for BanIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BanIndex").finish_non_exhaustive()
    }
}

/// A ban on its way to the index: the key, the ban's length when it was
/// queued and then, and why.
type Queued = (StateKey, Duration, tokio::time::Instant, String);

/// `reason` as the index keeps it: one line, at most [`MAX_BAN_REASON`] bytes.
fn one_line(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.trim().chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_BAN_REASON {
            break;
        }
        out.push(c);
    }
    out
}

/// A ban as the audit trail details it: `900s: reason`, or `900s`.
fn ban_detail(duration: Duration, reason: &str) -> String {
    let reason = one_line(reason);
    if reason.is_empty() {
        format!("{}s", duration.as_secs_f64())
    } else {
        format!("{}s: {reason}", duration.as_secs_f64())
    }
}

impl Policy {
    /// Bans `request`'s key for `duration` on every host sharing the store
    /// (a longer ban already there stays). `reason` goes to the log and to
    /// [`list_blocks`](Self::list_blocks). Returns whether a ban already held.
    pub async fn block(&self, request: &Request, duration: Duration, reason: &str) -> Result<bool> {
        let key = self.state_key(&self.rules(), request);
        self.block_key(&key, duration, reason).await
    }

    /// Bans the key at `key` (a [`Violation::state_key`](super::Violation::state_key))
    /// as [`block`](Self::block) does.
    pub async fn block_key(
        &self,
        key: &StateKey,
        duration: Duration,
        reason: &str,
    ) -> Result<bool> {
        tracing::info!(policy = %self.shared.name, key = %key.encoded(), seconds = duration.as_secs_f64(), reason, "key banned");
        let held = self.set_ban(key, Some(duration)).await?;
        self.shared.metrics.record_ban();
        self.unindex(key).await?;
        self.index(key, duration, reason).await?;
        self.audit("ban", key.encoded(), &ban_detail(duration, reason))
            .await;
        Ok(held)
    }

    /// Lifts `request`'s ban; returns whether one held.
    pub async fn unblock(&self, request: &Request) -> Result<bool> {
        let key = self.state_key(&self.rules(), request);
        tracing::info!(policy = %self.shared.name, key = %key.encoded(), "ban lifted by hand");
        let held = self.set_ban(&key, None).await?;
        self.unindex(&key).await?;
        let detail = if held { "lifted" } else { "none held" };
        self.audit("unban", key.encoded(), detail).await;
        Ok(held)
    }

    /// The bans in force, longest left first (see the module docs of
    /// `bans.rs`: a ban a check set is listed once the index has it, within
    /// a moment).
    pub async fn list_blocks(&self) -> Result<Vec<BlockEntry>> {
        let mut out: Vec<BlockEntry> = self
            .index_entries()
            .await?
            .into_iter()
            .filter_map(|e| {
                let (key, reason) = e.entry.split_once(' ').unwrap_or((&e.entry, ""));
                Some(BlockEntry {
                    key: key.to_string(),
                    reason: reason.to_string(),
                    left: e.left?,
                })
            })
            .collect();
        out.sort_by(|a, b| b.left.cmp(&a.left).then_with(|| a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Queues a ban a check set for the index (see the module docs).
    pub(super) fn index_later(&self, key: &StateKey, duration: Duration, reason: String) {
        let tx = self.shared.bans.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Queued>(BAN_INDEX_QUEUE);
            let weak: Weak<super::Shared> = Arc::downgrade(&self.shared);
            tokio::spawn(async move {
                while let Some((key, duration, queued, reason)) = rx.recv().await {
                    let Some(shared) = weak.upgrade() else { break };
                    let policy = Policy {
                        shared,
                        actor: Some("policy".into()),
                    };
                    // Listed until the ban's end, however long it waited here.
                    let Some(left) = duration.checked_sub(queued.elapsed()) else {
                        continue;
                    };
                    if let Err(e) = policy.index(&key, left, &reason).await {
                        tracing::warn!(policy = %policy.name(), key = %key.encoded(), error = %e,
                            "cannot list a ban in the store's ban index; the ban holds");
                    }
                    policy
                        .audit("ban", key.encoded(), &ban_detail(duration, &reason))
                        .await;
                }
            });
            tx
        });
        let queued = tokio::time::Instant::now();
        if tx
            .try_send((key.clone(), duration, queued, reason))
            .is_err()
        {
            tracing::warn!(policy = %self.shared.name, key = %key.encoded(),
                "the ban index queue is full; this ban holds but is not listed");
        }
    }

    async fn set_ban(&self, key: &StateKey, duration: Option<Duration>) -> Result<bool> {
        let ctx = Ctx {
            key,
            metrics: &self.shared.engine_metrics,
        };
        self.rules()
            .engine
            .set_ban(ctx, duration)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Where the ban index lives in the store.
    fn index_key(&self) -> StateKey {
        StateKey::new(self.shared.name).child("blocked")
    }

    async fn index(&self, key: &StateKey, duration: Duration, reason: &str) -> Result<()> {
        let entry = format!("{} {}", key.encoded(), one_line(reason));
        self.index_change(ListChange::Add {
            entry: entry.trim_end(),
            ttl: Some(duration),
        })
        .await
    }

    /// Takes every entry of `key` out of the index.
    async fn unindex(&self, key: &StateKey) -> Result<()> {
        let stored = key.encoded();
        for e in self.index_entries().await? {
            if e.entry.split_once(' ').map_or(&*e.entry, |(k, _)| k) == stored {
                self.index_change(ListChange::Remove { entry: &e.entry })
                    .await?;
            }
        }
        Ok(())
    }

    async fn index_entries(&self) -> Result<Vec<crate::engine::ListEntry>> {
        self.read_list(&self.index_key()).await
    }

    async fn index_change(&self, change: ListChange<'_>) -> Result<()> {
        self.change_list(&self.index_key(), change).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_reason_is_kept_on_one_bounded_line() {
        assert_eq!(one_line("  too\nmany\trequests "), "too many requests");
        let long = "é".repeat(300);
        let kept = one_line(&long);
        assert!(kept.len() <= super::MAX_BAN_REASON && kept.chars().all(|c| c == 'é'));
    }
}
