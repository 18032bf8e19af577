//! Helpers for users' own test suites: registries in one line, limiters on paused time.
//!
//! The in-memory engine reads [`tokio::time::Instant`], so on a paused tokio
//! clock (`#[tokio::test(start_paused = true)]`, or `paused_runtime()` with the `test-util` feature) a
//! limiter of one request per minute is tested in microseconds, exactly.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let reg = ratesync::testing::registry("[limiters.api]\nrate_per_second = 1.0").await;
//! assert!(reg.limiter("api").unwrap().try_acquire().await.unwrap().is_some());
//! # }
//! ```

use crate::Registry;

/// A registry built from configuration text.
///
/// # Panics
/// When the text is invalid, with the configuration error: this is a test helper.
pub async fn registry(toml: &str) -> Registry {
    match Registry::from_toml_str(toml).await {
        Ok(r) => r,
        Err(e) => panic!("ratesync::testing::registry: {e}"),
    }
}

/// A single-threaded tokio runtime whose clock starts paused and advances
/// only when every task is idle, so sleeps and timeouts complete at once and
/// measured waits are exact. Needs the `test-util` cargo feature.
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// let rt = ratesync::testing::paused_runtime();
/// rt.block_on(async {
///     let reg = ratesync::testing::registry("[limiters.slow]\nrate_per_second = 0.1").await;
///     let slow = reg.limiter("slow").unwrap();
///     let _first = slow.acquire().await.unwrap();
///     let second = slow.acquire().await.unwrap();      // ten "seconds" later, instantly
///     assert_eq!(second.waited(), std::time::Duration::from_secs(10));
/// });
/// # }
/// ```
#[cfg(feature = "test-util")]
pub fn paused_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("ratesync::testing::paused_runtime: cannot build a runtime: {e}"),
    }
}

mod faulty;
pub use faulty::{FaultyStore, Renewals};
