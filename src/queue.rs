//! In-process first-come, first-served order for concurrency waiters.
//!
//! Without it a task that drops its permit and asks again at once finds the
//! slot it just freed before the woken waiter's request reaches the store,
//! and takes it: the same few tasks keep the slots and the others wait until
//! they time out (`ratesync bench --limiter jobs --hold-ms 20` showed one task
//! with 9 grants beside another with 57). So, per key and per process, the
//! first waiter holds a gate and is the only one asking the store; later
//! waiters queue on the gate in arrival order; and a new request that finds
//! the gate held queues behind them instead of asking the store first.
//! Across processes each process's head waiter competes at the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use tokio::sync::Semaphore;

/// One gate per key with waiters, kept only while someone uses it.
#[derive(Debug, Default)]
pub(crate) struct WaitQueues {
    gates: Mutex<Gates>,
}

#[derive(Debug, Default)]
struct Gates {
    by_key: HashMap<Box<str>, Weak<Semaphore>>,
    prune_at: usize,
}

impl WaitQueues {
    /// The gate of `key`, created when absent.
    pub(crate) fn gate(&self, key: &str) -> Arc<Semaphore> {
        let mut g = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = g.by_key.get(key).and_then(Weak::upgrade) {
            return gate;
        }
        // Gates live only while a request holds them; drop the dead ones
        // now and then, so a limiter used on many keys keeps few.
        if g.by_key.len() >= g.prune_at {
            g.by_key.retain(|_, w| w.strong_count() > 0);
            g.prune_at = (g.by_key.len() * 2).max(64);
        }
        let gate = Arc::new(Semaphore::new(1));
        g.by_key.insert(key.into(), Arc::downgrade(&gate));
        gate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gate_per_live_key_and_dead_ones_go() {
        let q = WaitQueues::default();
        let a = q.gate("a");
        assert!(Arc::ptr_eq(&a, &q.gate("a")));
        let kept: Vec<_> = (0..200).map(|i| q.gate(&format!("k{i}"))).collect();
        drop(kept);
        for i in 0..200 {
            drop(q.gate(&format!("x{i}")));
        }
        let live = q.gates.lock().unwrap().by_key.len();
        assert!(live < 200, "dead gates are pruned ({live} kept)");
        assert!(
            Arc::ptr_eq(&a, &q.gate("a")),
            "a live gate survives pruning"
        );
    }
}
