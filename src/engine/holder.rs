//! Unique ids for the holders of concurrency slots.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Identifies one holder of a concurrency slot, unique across processes and hosts.
///
/// Made of the process id, a random per-process nonce (so a recycled pid on
/// another host cannot clash) and a per-process counter.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HolderId(Arc<str>);

impl HolderId {
    /// A fresh id, never returned before.
    pub fn new() -> Self {
        static NONCE: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nonce = *NONCE.get_or_init(rand::random::<u64>);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!("{:x}-{nonce:016x}-{n:x}", std::process::id()).into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for HolderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderId({})", self.0)
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
