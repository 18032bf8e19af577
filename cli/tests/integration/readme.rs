//! Every `cargo run` command the README shows runs as written: the CLI
//! commands against the repository's own `config.toml`, and the examples.
//!
//! The commands are read from the README itself (its `sh` blocks and inline
//! code), so a command added there is tried here. `cargo run -- ARGS` runs
//! the binary under test with ARGS; `cargo run --example NAME` runs the
//! example cargo built for this test run. Commands that need Docker, a
//! shell variable or a service set-up are not `cargo run` commands and are
//! left to the sections that explain them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ sits in the repository")
        .to_path_buf()
}

/// `cargo run ...` commands of the README, with their `VAR=value` prefixes.
fn readme_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Inside a fenced block: `Some(true)` for a shell block.
    let mut block: Option<bool> = None;
    for line in readme.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            block = match block {
                Some(_) => None,
                None => Some(matches!(t, "```sh" | "```bash" | "```shell")),
            };
            continue;
        }
        if block == Some(false) {
            continue;
        }
        if block == Some(true) {
            let cmd = t.split(" #").next().unwrap_or("").trim();
            out.push(cmd.to_string());
        } else {
            // Inline code: `...`.
            let mut rest = line;
            while let Some(a) = rest.find('`') {
                let after = &rest[a + 1..];
                let Some(b) = after.find('`') else { break };
                out.push(after[..b].trim().to_string());
                rest = &after[b + 1..];
            }
        }
    }
    out.retain(|c| {
        let bare = c.trim_start_matches(|ch: char| ch.is_ascii_uppercase() || ch == '_');
        (c.starts_with("cargo run") || (bare.starts_with('=') && c.contains(" cargo run")))
            && !c.contains('$')
            && !c.contains("...")
    });
    out.sort();
    out.dedup();
    out
}

/// The example binaries cargo built beside this test's own executable.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/..");
    debug.join("examples").join(name)
}

struct Run {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Exit codes that mean "ran as documented" (acquire: 2 when refused).
    ok: Vec<i32>,
}

fn plan(cmd: &str) -> Option<Run> {
    let mut words: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    let mut env = Vec::new();
    while words
        .first()
        .is_some_and(|w| w.contains('=') && !w.starts_with('-'))
    {
        let w = words.remove(0);
        let (k, v) = w.split_once('=').unwrap_or((&w, ""));
        env.push((k.to_string(), v.to_string()));
    }
    // cargo run [--release] [--features F] (-- ARGS | --example NAME [...])
    let rest: Vec<String> = words.into_iter().skip(2).collect();
    if let Some(i) = rest.iter().position(|w| w == "--example") {
        let name = rest.get(i + 1)?.clone();
        return Some(Run {
            program: example(&name),
            args: Vec::new(),
            env,
            ok: vec![0],
        });
    }
    let i = rest.iter().position(|w| w == "--")?;
    let args: Vec<String> = rest[i + 1..].to_vec();
    let ok = if args.first().is_some_and(|a| a == "acquire") {
        vec![0, 2]
    } else {
        vec![0]
    };
    Some(Run {
        program: PathBuf::from(env!("CARGO_BIN_EXE_ratesync")),
        args,
        env,
        ok,
    })
}

#[test]
fn every_cargo_run_command_of_the_readme_runs_as_written() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let commands = readme_commands(&readme);
    for must in [
        "cargo run --example quickstart",
        "cargo run -- check",
        "cargo run -- reset per_user --key alice",
    ] {
        assert!(
            commands.iter().any(|c| c == must),
            "the reader missed `{must}`: {commands:?}"
        );
    }
    let mut ran = 0;
    for cmd in &commands {
        let Some(run) = plan(cmd) else {
            panic!("cannot read the README command `{cmd}`");
        };
        assert!(
            run.program.exists(),
            "`{cmd}`: {} was not built (cargo test builds the examples and the binary)",
            run.program.display()
        );
        let started = Instant::now();
        let out = Command::new(&run.program)
            .args(&run.args)
            .envs(run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The repository's config.toml, as a reader at its root has it.
            .env_remove("RATESYNC_CONFIG")
            .current_dir(&root)
            .output()
            .unwrap_or_else(|e| panic!("`{cmd}`: {e}"));
        let code = out.status.code().unwrap_or(-1);
        assert!(
            run.ok.contains(&code),
            "`{cmd}` exited {code}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "`{cmd}` took {:?}",
            started.elapsed()
        );
        println!(
            "README: `{cmd}` -> exit {code} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} README commands found: {commands:?}");
}

#[test]
fn the_reader_finds_commands_in_blocks_and_inline() {
    let text = "x `cargo run --example a` y `cargo build`\n```sh\ncargo run -- check   # c\nredis-server\n```\n`RATESYNC_ALERT_INTERVAL=1 cargo run --example b`\n```rust\ncargo run -- no\n```";
    assert_eq!(
        readme_commands(text),
        [
            "RATESYNC_ALERT_INTERVAL=1 cargo run --example b",
            "cargo run -- check",
            "cargo run --example a"
        ]
    );
}
