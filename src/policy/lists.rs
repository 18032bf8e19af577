//! Allow and deny lists changed at run time: kept in the store, so a change
//! made on one host holds on every host, and copied into each process, so a
//! check looks them up without a round trip. The copy is read again every
//! [`LIST_REFRESH`] (and at once after a change made here), so another
//! host's change holds here within that time.

use super::list::KeyList;
use super::Policy;
use crate::engine::{Ctx, ListChange, ListEntry};
use crate::error::{Error, Result};
use crate::key::StateKey;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often each process reads its policies' lists from the store again.
pub const LIST_REFRESH: Duration = Duration::from_millis(500);

/// The longest list entry, in bytes.
pub const MAX_LIST_ENTRY: usize = 1024;

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Never limited, never counted.
    Exempt,
    /// Always refused (403).
    Deny,
}

impl ListKind {
    /// The name the configuration and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Exempt => "exempt",
            ListKind::Deny => "deny",
        }
    }
}

/// This process's copy of a policy's lists from the store.
#[derive(Debug, Default)]
pub(super) struct RuntimeLists {
    pub(super) exempt: KeyList,
    pub(super) deny: KeyList,
}

impl Policy {
    /// Where `list` lives in the store.
    fn list_key(&self, list: ListKind) -> StateKey {
        StateKey::new(self.shared.name).child(list.as_str())
    }

    /// Adds `entry` (an exact key, an address, or a CIDR range, as in the
    /// configuration) to `list` in the store, for `ttl` (`None`: until
    /// removed). Every host sharing the store holds it within
    /// [`LIST_REFRESH`]; this one at once. Returns whether the list changed.
    pub async fn list_add(
        &self,
        list: ListKind,
        entry: &str,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let entry = entry.trim();
        if entry.len() > MAX_LIST_ENTRY {
            return Err(Error::Unsupported(format!(
                "policy `{}`: a {} entry is at most {MAX_LIST_ENTRY} bytes, got {}",
                self.shared.name,
                list.as_str(),
                entry.len()
            )));
        }
        KeyList::parse(&[entry]).map_err(|e| {
            Error::Unsupported(format!(
                "policy `{}`: {} entry {e}",
                self.shared.name,
                list.as_str()
            ))
        })?;
        let changed = self.change(list, ListChange::Add { entry, ttl }).await?;
        let detail = ttl.map_or_else(
            || "until removed".to_string(),
            |t| format!("for {}s", t.as_secs_f64()),
        );
        self.audit(&format!("{}_add", list.as_str()), entry, &detail)
            .await;
        Ok(changed)
    }

    /// Removes `entry` from `list` in the store; returns whether it was there.
    pub async fn list_remove(&self, list: ListKind, entry: &str) -> Result<bool> {
        let entry = entry.trim();
        let removed = self.change(list, ListChange::Remove { entry }).await?;
        let detail = if removed { "removed" } else { "was not listed" };
        self.audit(&format!("{}_remove", list.as_str()), entry, detail)
            .await;
        Ok(removed)
    }

    /// The entries of `list` in the store now (not those of the configuration).
    pub async fn list_entries(&self, list: ListKind) -> Result<Vec<ListEntry>> {
        let mut entries = self.read_list(&self.list_key(list)).await?;
        entries.sort_by(|a, b| a.entry.cmp(&b.entry));
        Ok(entries)
    }

    /// The live entries of the list the store keeps at `key`.
    pub(super) async fn read_list(&self, key: &StateKey) -> Result<Vec<ListEntry>> {
        let ctx = Ctx {
            key,
            metrics: &self.shared.engine_metrics,
        };
        self.rules()
            .engine
            .list_read(ctx)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Changes the list the store keeps at `key`; true when it changed.
    pub(super) async fn change_list(&self, key: &StateKey, change: ListChange<'_>) -> Result<bool> {
        let ctx = Ctx {
            key,
            metrics: &self.shared.engine_metrics,
        };
        self.rules()
            .engine
            .list_change(ctx, change)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Reads both lists from the store into this process's copy now (the
    /// registry does at start, and every [`LIST_REFRESH`] after).
    pub async fn refresh_lists(&self) -> Result<()> {
        let exempt = self.list_entries(ListKind::Exempt).await?;
        let deny = self.list_entries(ListKind::Deny).await?;
        let parse = |entries: &[ListEntry]| {
            let mut list = KeyList::default();
            for e in entries {
                // Entries were checked when added; one that no longer parses
                // (a newer build's) is left out rather than lose the rest.
                if let Err(why) = list.add(&e.entry) {
                    tracing::warn!(policy = %self.shared.name, entry = %e.entry, why, "list entry left out");
                }
            }
            list
        };
        let fresh = RuntimeLists {
            exempt: parse(&exempt),
            deny: parse(&deny),
        };
        self.shared.runtime.store(Arc::new(fresh));
        Ok(())
    }

    /// Entries of the store's exempt and deny lists in this process's copy.
    pub(super) fn runtime_sizes(&self) -> (usize, usize) {
        let rt = self.shared.runtime.load();
        (rt.exempt.len(), rt.deny.len())
    }

    async fn change(&self, list: ListKind, change: ListChange<'_>) -> Result<bool> {
        let changed = self.change_list(&self.list_key(list), change).await?;
        tracing::info!(policy = %self.shared.name, list = list.as_str(), ?change, changed, "policy list changed");
        self.refresh_lists().await?;
        Ok(changed)
    }

    /// A store failure outside a decision (bans and lists by hand), where
    /// no failure mode applies: counted and returned.
    pub(super) fn store_error(&self, e: crate::error::BackendError) -> Error {
        self.shared.metrics.record_backend_error();
        Error::PolicyBackend {
            policy: self.shared.name.to_string(),
            store: self.rules().spec.store.clone(),
            source: e,
        }
    }

    /// Keeps this process's copy of the lists fresh every [`LIST_REFRESH`]
    /// on the current tokio runtime, until the policy is dropped; a failed
    /// read keeps the copy it has and is logged (once until it recovers).
    pub(crate) fn keep_lists_fresh(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<super::Shared> = Arc::downgrade(&self.shared);
        handle.spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(LIST_REFRESH).await;
                let Some(shared) = weak.upgrade() else { break };
                let policy = Policy {
                    shared,
                    actor: Some("policy".into()),
                };
                match policy.refresh_lists().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(policy = %policy.name(), "policy lists read again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(policy = %policy.name(), error = %e, "cannot read the policy's lists; keeping the copy this process has");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
