//! The in-memory engine against the engine contract (no service needed).

use crate::contract;
use crate::support::unique_prefix;

#[test]
fn memory_engine_keeps_the_contract() {
    // The lease timings of the contract need a quiet CPU.
    let _serial = crate::support::serial();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let registry = ratesync::Registry::new();
        let engine = registry.store("memory").expect("the built-in store");
        let scope = unique_prefix("contract");
        contract::run_all("memory", &*engine, &scope).await;
        crate::policy_contract::run_all("memory", &*engine, &scope).await;
    });
}

const MEMORY: crate::scenarios::Target = crate::scenarios::Target {
    label: "memory",
    store: |_| "[stores.s]\nengine = \"memory\"\n".to_string(),
};

#[test]
fn long_keys_keep_their_limit() {
    let n = crate::scenarios::long_keys_keep_their_limit(&MEMORY);
    println!("memory: {n} keys of 3 KB to 1 MiB kept their limit");
}
