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

/// SIGHUP makes a running worker re-read its file: a policy's limit raised
/// mid-run admits more from then on; a bad file then changes nothing.
#[cfg(unix)]
#[test]
fn sighup_reloads_a_running_workers_policies() {
    use crate::support::*;
    let dir = scratch("sighup");
    let policy = |limit: &str| {
        format!("[policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1h\", limit = {limit} }}]\n")
    };
    let config = write_config(&dir, &policy("5"));
    let mut opts = WorkerOpts::new("api", 2, 3.0);
    opts.mode = "try";
    opts.key = Some("k".into());
    opts.policy = true;
    let workers = spawn_workers(&config, &dir, 1, &opts, start_soon());
    let pid = workers[0].child.id();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    std::fs::write(&config, policy("40")).unwrap();
    sh(&format!("kill -HUP {pid}"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(&config, policy("0")).unwrap();
    sh(&format!("kill -HUP {pid}"));
    let (grants, stderr) = collect(workers);
    let said = stderr.join("\n");
    println!(
        "memory: SIGHUP reload: {} admitted (5, then 40 after the reload)",
        grants.len()
    );
    assert!(
        said.contains("reloaded (configuration version 2)"),
        "{said}"
    );
    assert!(
        said.contains("not reloaded, the rules in force stay") && said.contains("limit"),
        "{said}"
    );
    assert_eq!(grants.len(), 40, "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
