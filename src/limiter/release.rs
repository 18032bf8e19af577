//! Giving slots back: at once where the engine can, else on a background
//! task counted so that a program can wait for it before it exits.

use super::Limiter;
use crate::engine::HolderId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Releases running in the background (permits dropped rather than released),
/// counted so that a program can wait for them before it exits: a runtime
/// that shuts down drops them, and their slots stay held until the lease ends.
struct BackgroundReleases {
    running: AtomicUsize,
    finished: tokio::sync::Notify,
}

static BACKGROUND: BackgroundReleases = BackgroundReleases {
    running: AtomicUsize::new(0),
    finished: tokio::sync::Notify::const_new(),
};

/// Counts one background release for as long as it lives, cancelled or not.
pub(super) struct Running;

impl Running {
    pub(super) fn start() -> Self {
        BACKGROUND.running.fetch_add(1, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if BACKGROUND.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            BACKGROUND.finished.notify_waiters();
        }
    }
}

/// Waits until the slots of dropped permits have been given back to their
/// stores, at most `timeout`; true when none is left pending.
///
/// Dropping a [`Permit`](crate::Permit) (or an `acquire` future) frees its slot on a
/// background task. Call this (or [`Registry::close`](crate::Registry::close))
/// before the runtime shuts down, or those slots stay held until their lease
/// runs out.
pub async fn wait_for_releases(timeout: Duration) -> bool {
    let wait = async {
        loop {
            let finished = BACKGROUND.finished.notified();
            if BACKGROUND.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            finished.await;
        }
    };
    tokio::time::timeout(timeout, wait).await.is_ok()
}

/// Frees `holder`'s slot without awaiting: at once where the engine can,
/// else on a spawned task. Without a runtime the lease simply runs out.
pub(crate) fn release_in_background(limiter: &Limiter, holder: HolderId) {
    release_detached(limiter, holder, true);
}

/// Frees a slot that a failed request *may* have taken. The store already
/// failed once for this request (and that was counted), so a failure here
/// is only logged.
pub(crate) fn release_after_failure(limiter: &Limiter, holder: HolderId) {
    release_detached(limiter, holder, false);
}

fn release_detached(limiter: &Limiter, holder: HolderId, count_failure: bool) {
    if limiter
        .shared
        .engine
        .release_lease_now(limiter.ctx(), &holder)
        .is_some()
    {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let limiter = limiter.clone();
            let running = Running::start();
            handle.spawn(async move {
                let _running = running;
                if let Err(e) = limiter.shared.engine.release_lease(limiter.ctx(), &holder).await {
                    if count_failure {
                        limiter.shared.metrics.record_backend_error();
                        tracing::warn!(limiter = %limiter.shared.name, error = %e,
                            "could not release a concurrency slot; it frees itself when its lease runs out");
                    } else {
                        tracing::debug!(limiter = %limiter.shared.name, error = %e,
                            "could not release a slot a failed request may have taken; it frees itself when its lease runs out");
                    }
                }
            });
        }
        Err(_) => tracing::warn!(limiter = %limiter.shared.name,
            "permit dropped outside a tokio runtime; its slot frees itself when its lease runs out"),
    }
}

/// How long a registry waits for the releases in flight, closing
/// ([`Registry::close`](crate::Registry::close)) or going away.
pub(crate) const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// Called when a registry goes away: a program that dropped its permits and
/// returns from `main` would otherwise shut the runtime down under their
/// releases, and the slots would stay held until their leases ran out. On a
/// multi-threaded runtime this waits for them (at most 5 s, the thread
/// blocked meanwhile); where it cannot wait (a current-thread runtime, whose
/// one thread the releases need, or no runtime), it warns.
pub(crate) fn flush_on_drop() {
    let pending = BACKGROUND.running.load(Ordering::SeqCst);
    if pending == 0 {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            // The runtime's other threads run the releases while this one
            // waits outside it (block_in_place). Polled on the OS clock
            // rather than awaited: a drop may run while the runtime shuts
            // down, when its timers can no longer be used; then the release
            // tasks are being dropped too, and the count falls to zero.
            let deadline = std::time::Instant::now() + RELEASE_GRACE;
            let done = tokio::task::block_in_place(|| loop {
                if BACKGROUND.running.load(Ordering::SeqCst) == 0 {
                    break true;
                }
                if std::time::Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(1));
            });
            if !done {
                tracing::warn!(
                    pending = BACKGROUND.running.load(Ordering::SeqCst),
                    "a registry went away and some concurrency slots were not given back within 5 s; they free themselves when their leases run out"
                );
            }
        }
        _ => tracing::warn!(
            pending,
            "a registry went away while concurrency slots were still being given back, and this runtime cannot wait for them here; call `Registry::close().await` before the program exits, or the slots stay held until their leases run out"
        ),
    }
}
