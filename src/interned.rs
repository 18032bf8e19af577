//! Names from configuration, stored once for the life of the process.
//!
//! Every permit names its limiter and every policy decision its policy and
//! windows. As a shared `Arc<str>` each name cost two locked instructions
//! per decision on one counter all threads share (an in-process
//! `try_acquire` spent ~5% of its time on the decrement alone, in `perf`;
//! a policy check of three windows cloned four). These names come from
//! configuration and code, never from a client, so the set is as small as
//! the configuration: a name registered again (a reloaded registry) is
//! found, not stored twice.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

/// `name`, stored once for the life of the process.
pub(crate) fn interned(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = names.get(name) {
        return known;
    }
    let stored: &'static str = Box::leak(name.into());
    names.insert(stored);
    stored
}

#[cfg(test)]
mod tests {
    use super::interned;

    #[test]
    fn a_name_is_stored_once() {
        let a = interned("interned-test");
        let b = interned(&String::from("interned-test"));
        assert!(std::ptr::eq(a, b));
        assert_ne!(interned("interned-other"), a);
    }
}
