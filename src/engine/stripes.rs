//! At most one decision per key in flight from this process, for engines whose backend serialises a key anyway.
//!
//! A hot key's writers queue in the backend whatever we do: on a row lock
//! (Postgres) or as compare-and-set conflicts (NATS KV). Queueing them here
//! instead keeps the wait in memory and the backend's critical section
//! short. Keys are hashed onto a fixed set of async mutexes; two keys that
//! share a stripe merely take turns.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use tokio::sync::{Mutex, MutexGuard};

/// The number of stripes: enough that unrelated keys rarely wait for each
/// other at the pool sizes used here.
const STRIPES: usize = 64;

/// A fixed set of per-key turn-taking locks.
pub(crate) struct KeyStripes {
    stripes: Box<[Mutex<()>]>,
}

/// The turns taken for one decision; dropping it lets the next caller go.
pub(crate) struct Turns<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl KeyStripes {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn index(key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % STRIPES as u64) as usize
    }

    /// Waits for the turn of every key in `keys`. Stripes are taken in index
    /// order, so two callers with overlapping keys cannot deadlock.
    pub(crate) async fn turn<'a>(&'a self, keys: &[&str]) -> Turns<'a> {
        let mut idx: Vec<usize> = keys.iter().map(|k| Self::index(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        Turns { _guards: guards }
    }
}
