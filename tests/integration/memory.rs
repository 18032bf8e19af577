//! The in-memory engine against the engine contract (no service needed).

use crate::contract;
use crate::support::unique_prefix;

#[tokio::test]
async fn memory_engine_keeps_the_contract() {
    let registry = ratesync::Registry::new();
    let engine = registry.store("memory").expect("the built-in store");
    contract::run_all("memory", &*engine, &unique_prefix("contract")).await;
}
