//! The KV watch on the lease keys that wakes this process's waiters when a
//! key's holders decrease (see `ReleaseListener` in the engine module).

use super::state::State;
use super::CACHE_MAX;
use crate::engine::Listening;
use crate::lease;
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use std::collections::HashMap;

/// One KV watch on the lease keys, waking local waiters of a key whose
/// holders decreased, until the watch ends.
pub(super) async fn listen(kv: kv::Store, pattern: String, l: Listening) -> Result<(), String> {
    let mut updates = kv.watch(&pattern).await.map_err(|e| e.to_string())?;
    if !l.started() {
        return Ok(());
    }
    let mut leases: HashMap<String, usize> = HashMap::new();
    while let Some(update) = updates.next().await {
        let Some(h) = l.hub() else { return Ok(()) };
        let entry = match update {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "nats KV watch error");
                break;
            }
        };
        let held = match entry.operation {
            kv::Operation::Put => State::decode(&entry.value)
                .map(|s| lease::holders(&s.into_leases()).count())
                .unwrap_or(0),
            _ => 0,
        };
        if leases.len() >= CACHE_MAX {
            leases.clear();
        }
        match leases.insert(entry.key.clone(), held) {
            Some(before) if held >= before => {}
            _ => h.notify(&entry.key),
        }
    }
    Ok(())
}
